"""The player's `config.toml`: defaults for new adventures, read into a validated `Config`."""

from __future__ import annotations

import tomllib
from pathlib import Path

from aidungeon.core.config import Config
from aidungeon.core.errors import ConfigError


def load_config(path: Path) -> Config:
    """The config saved at `path`, or the defaults when there is none yet."""
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML ({err}); fix or delete it") from None
    try:
        return Config.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
