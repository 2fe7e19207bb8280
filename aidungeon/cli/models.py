"""Choosing and loading the model for any command: the config with this run's flags, a local
path made absolute, and a load with its progress shown. Shared by play, serve and bench."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aidungeon.core.config import Config
from aidungeon.model.protocol import EngineProtocol
from aidungeon.storage.config_file import load_config
from aidungeon.storage.paths import Paths


def session_config(args: argparse.Namespace, paths: Paths) -> Config:
    """The player's saved config with this run's command-line choices on top."""
    config = load_config(paths.config_file)
    return config.with_overrides({"model": args.model, "device": args.device, "dtype": args.dtype, "seed": args.seed})


def absolute_if_local(spec: str) -> str:
    """A model folder or file given by a relative path is kept absolute, so the save's `--load` works anywhere."""
    from aidungeon.model.loader import PRESETS

    path = Path(spec).expanduser()
    if spec.strip().lower() in PRESETS or not path.exists():
        return spec
    return str(path.resolve())


def load_model_shown(config: Config, spec: str, paths: Paths, console: Any) -> Any:
    """Load a model with progress shown, or connect to the server an `openai:` spec names."""
    from aidungeon.model.remote import RemoteEngine, is_remote

    if is_remote(spec):
        with console.status("Connecting to the model server"):
            return RemoteEngine.connect(spec)
    from aidungeon.model.loader import load_model
    from aidungeon.ui.terminal.render import progress_bar

    with progress_bar(console) as progress:
        return load_model(spec, paths, device=config.app.device, dtype=config.app.dtype, progress=progress)


def engine_for(loaded: Any) -> EngineProtocol:
    """The engine for what `load_model_shown` gave: a remote server is one already; a loaded
    model gets the batching engine."""
    from aidungeon.model.remote import RemoteEngine

    if isinstance(loaded, RemoteEngine):
        return loaded
    from aidungeon.model.engine import Engine

    return Engine.for_model(loaded)
