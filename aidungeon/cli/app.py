"""Command line: parse arguments, build the objects, run. Thin by design.

`aidungeon` plays (menu, or straight in with --prompt, --setting or --load); the subcommands
`models`, `saves`, `import`, `export`, `doctor` and `bench` manage the rest. Every
AIDungeonError ends as one clear line and an exit code, never a traceback. torch is imported
only once a model is needed, so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aidungeon import __version__
from aidungeon.cli.models import absolute_if_local, engine_for, load_model_shown, session_config
from aidungeon.core.config import DEVICES, DTYPES, Config
from aidungeon.core.errors import AIDungeonError, ConfigError
from aidungeon.storage.paths import Paths, default_paths

if TYPE_CHECKING:
    from aidungeon.game.session import Session
    from aidungeon.model.loader import LoadedModel
    from aidungeon.model.remote import RemoteEngine
    from aidungeon.ui.terminal.menu import StartChoice

PROCESS_START = time.perf_counter()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aidungeon",
        description="An AI text adventure for your terminal, played on a local language model.",
        epilog="Commands inside the game start with /; type /help there.",
    )
    parser.add_argument("--version", action="version", version=f"aidungeon {__version__}")
    _add_play_options(parser)
    _add_server_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("models", help="list the model presets and which are on this machine")
    commands.add_parser("doctor", help="show the device, memory, versions, models and folders")
    saves = commands.add_parser("saves", help="list saved adventures, or remove one (saves rm NAME)")
    saves.add_argument("action", nargs="?", choices=["list", "rm"], default="list")
    saves.add_argument("name", nargs="?")
    saves.add_argument("--yes", action="store_true", help="remove without asking")
    importer = commands.add_parser("import", help="import a save from AI Dungeon 2, Clover Edition or KoboldAI")
    importer.add_argument("file", type=Path)
    importer.add_argument("--name", help="save name for the imported adventure")
    exporter = commands.add_parser("export", help="export a saved adventure as md, txt or html")
    exporter.add_argument("name")
    exporter.add_argument("--format", default="md", choices=["md", "txt", "html"])
    exporter.add_argument(
        "-o", "--output", type=Path, help="file to write (default: DATA/exports/NAME.FORMAT; - for standard output)"
    )
    exporter.add_argument("--force", action="store_true", help="replace the file if it exists")
    from aidungeon.bench.serve import add_serve_arguments as add_bench_serve_arguments
    from aidungeon.bench.speed import add_arguments as add_bench_arguments

    bench = commands.add_parser("bench", help="measure speed, coherence or serving on this machine")
    add_bench_arguments(bench)
    add_bench_serve_arguments(bench)
    from aidungeon.cli.serve import add_arguments as add_serve_arguments

    add_serve_arguments(commands.add_parser("serve", help="serve the game over HTTP to many players on one model"))
    return parser


def _add_play_options(parser: argparse.ArgumentParser) -> None:
    play = parser.add_argument_group("play")
    play.add_argument("--prompt", help="start a custom adventure with this opening")
    play.add_argument("--setting", help="start from a setting (fantasy, mystery, ...)")
    play.add_argument("--character", help="the character to play in that setting")
    play.add_argument("--name", help="your character's name")
    play.add_argument("--load", nargs="?", const="", metavar="NAME", help="resume a save (default: the latest)")
    play.add_argument("--seed", type=int, help="seed for a reproducible story")
    play.add_argument("--model", help="preset, model folder, .gguf file, cached hub id or openai:URL[#MODEL]")
    play.add_argument("--device", choices=DEVICES, help="where the model runs (default: auto)")
    play.add_argument("--dtype", choices=DTYPES, help="weight precision (default: auto)")
    play.add_argument("--no-color", action="store_true", help="no colours (NO_COLOR is honoured too)")
    play.add_argument("-v", "--verbose", action="store_true", help="log what the game does")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from aidungeon.ui.terminal.render import make_console

    console = make_console(no_color=args.no_color)
    err_console = make_console(no_color=args.no_color, file=sys.stderr)
    code = _run_to_exit_code(args, console, err_console)
    if EarlyLoad.running():
        _exit_now(code)
    return code


def _run_to_exit_code(args: argparse.Namespace, console: Any, err_console: Any) -> int:
    """Run, mapping what ends the program early to one line and an exit code."""
    try:
        return _run(args, console)
    except AIDungeonError as err:
        err_console.print(f"aidungeon: {err}", style="bold red", markup=False)
        return err.exit_code
    except KeyboardInterrupt:
        err_console.print("aidungeon: stopped", markup=False)
        return 130
    except EOFError:  # input ended before the game began (Ctrl-D in the menu, an empty pipe)
        return 0


def _exit_now(code: int) -> None:
    """End the process at once, with `code`, while the model loader thread is still running.

    A normal exit tears the interpreter down under that thread while it is inside torch's C++
    code, which then aborts the process ("terminate called without an active exception",
    exit 134). Waiting for the load instead would keep a player who quit waiting for a model
    they no longer want. Nothing is lost: saves and history are written as they happen, and
    the loader only reads a model (a GGUF conversion it may be running writes into a staging
    folder renamed into place only when complete); so output is flushed and the process ends
    without the teardown.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _run(args: argparse.Namespace, console: Any) -> int:
    paths = default_paths()
    if args.command == "models":
        from aidungeon.cli.admin import show_models

        return show_models(paths, console, model=args.model)
    if args.command == "doctor":
        from aidungeon.cli.admin import doctor

        return doctor(paths, console, model=args.model)
    if args.command == "saves":
        from aidungeon.cli.admin import manage_saves

        return manage_saves(paths, console, args.action, args.name, yes=args.yes)
    if args.command == "import":
        from aidungeon.cli.admin import import_saves

        return import_saves(paths, console, args.file, args.name)
    if args.command == "export":
        from aidungeon.cli.admin import export_save

        return export_save(paths, console, args.name, args.format, args.output, force=args.force)
    if args.command == "serve":
        from aidungeon.cli.serve import run_serve

        return run_serve(args, paths, session_config(args, paths), console)
    if args.command == "bench":
        from aidungeon.cli.bench import run_bench

        return run_bench(args, paths, console, started_at=time.time() - (time.perf_counter() - PROCESS_START))
    if args.server:
        return play_on_server(args, paths, console)
    return play(args, paths, console)


def play(args: argparse.Namespace, paths: Paths, console: Any) -> int:
    """Play: the start menu (or the flags that answer it), the model, then the game loop."""
    from aidungeon.game.events import Event, EventKind, recap
    from aidungeon.ui.terminal.menu import choose_start
    from aidungeon.ui.terminal.render import Renderer
    from aidungeon.ui.terminal.repl import Terminal
    from aidungeon.ui.terminal.repl import play as play_loop

    if (args.character or args.name) and not args.setting:
        raise ConfigError("--character and --name go with --setting")
    config = session_config(args, paths)
    renderer = Renderer(console)
    terminal = Terminal(
        renderer,
        history=paths.history_file,
        interactive=sys.stdin.isatty() and console.is_terminal,
        no_color=args.no_color,
    )
    # With --load the save names the model, so nothing is loaded before it is read.
    early = None if args.load is not None else EarlyLoad.start(config, args.model or config.app.model, paths)
    start = choose_start(args, paths, terminal)
    config = _start_config(args, config, start)
    spec = absolute_if_local(args.model or (start.save.model if start.save else "") or config.app.model)
    # The story so far needs no model: the player reads it while the model finishes loading.
    for event in recap(start.story):
        renderer.show(event)
    loaded = early.result(spec, console) if early else None
    if loaded is None:
        loaded = load_model_shown(config, spec, paths, console)
    session = _new_session(start, loaded, config, paths, spec)
    for warning in start.warnings:
        renderer.show(Event(EventKind.INFO, warning))
    logging.getLogger(__name__).info("ready in %.2f s", time.perf_counter() - PROCESS_START)
    return play_loop(session, terminal, recap_shown=True)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    client = parser.add_argument_group("playing on a server (aidungeon serve)")
    client.add_argument(
        "--server",
        metavar="URL",
        help="play your stories on this server instead of a local model (several of one database: URL,URL)",
    )
    client.add_argument("--token", help="your bearer token on that server (default: $AIDUNGEON_TOKEN)")


def play_on_server(args: argparse.Namespace, paths: Paths, console: Any) -> int:
    """Play a story on `aidungeon serve` at --server through the same REPL; no model loads here.
    The menu lists your server stories and its settings; --load/--prompt/--setting skip it."""
    from aidungeon.client.api import GameAPI
    from aidungeon.client.session import ServerSession
    from aidungeon.client.start import choose_story
    from aidungeon.ui.terminal.render import Renderer
    from aidungeon.ui.terminal.repl import Terminal
    from aidungeon.ui.terminal.repl import play as play_loop

    local = [f"--{name}" for name in ("model", "device", "dtype", "seed") if getattr(args, name) is not None]
    if local:
        raise ConfigError(f"{', '.join(local)} belong to a local game; on a server, /set changes a story's settings")
    if (args.character or args.name) and not args.setting:
        raise ConfigError("--character and --name go with --setting")
    terminal = Terminal(
        Renderer(console),
        history=paths.history_file,
        interactive=sys.stdin.isatty() and console.is_terminal,
        no_color=args.no_color,
    )
    api = GameAPI(args.server, args.token or os.environ.get("AIDUNGEON_TOKEN") or None)
    try:
        story_id = choose_story(args, api, terminal)
    except BaseException:
        api.close()
        raise
    return play_loop(ServerSession(api, story_id, exports_dir=paths.data_dir / "exports"), terminal)


def _start_config(args: argparse.Namespace, config: Config, start: StartChoice) -> Config:
    """A loaded save's own settings (with this run's app settings, and --seed on top)."""
    if start.save is None:
        return config
    from aidungeon.game.persist import settings_from_save

    config = settings_from_save(config, start.save)
    return config.with_value("seed", args.seed) if args.seed is not None else config


def _new_session(
    start: StartChoice, loaded: LoadedModel | RemoteEngine, config: Config, paths: Paths, spec: str
) -> Session:
    """The game session on the loaded model (or remote server), saving under the save it came
    from or a new name."""
    from aidungeon.game.start import start_session
    from aidungeon.storage import saves

    name = start.save_name or saves.autosave_name(paths.saves_dir, start.story)
    return start_session(
        start.story, engine_for(loaded), config, paths, save_name=name, model_name=spec, layout=loaded.layout
    )


class EarlyLoad:
    """Loads the model in the background while the player is in the start menu, so the story
    starts as soon as they have picked.

    Only a model already on disk is loaded early: a first-time fetch shows its progress in
    the foreground instead. If the player then loads a save made with another model from the
    menu, the early one is not used.
    """

    THREAD_NAME = "model-load"

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.loaded: Any = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, config: Config, spec: str, paths: Paths) -> EarlyLoad | None:
        from aidungeon.model.loader import PRESETS, is_present
        from aidungeon.model.remote import is_remote

        if is_remote(spec):
            return None  # nothing to load: the server is asked once the story is chosen
        preset = PRESETS.get(spec.strip().lower())
        if preset is not None and not is_present(preset, paths):
            return None
        early = cls(absolute_if_local(spec))
        early._thread = threading.Thread(target=early._load, args=(config, paths), name=cls.THREAD_NAME, daemon=True)
        early._thread.start()
        return early

    @classmethod
    def running(cls) -> bool:
        """Whether an early load is still running in this process (it may be left when the
        player quits from the menu, or picks a save made with another model)."""
        return any(t.name == cls.THREAD_NAME and t.is_alive() for t in threading.enumerate())

    def _load(self, config: Config, paths: Paths) -> None:
        from aidungeon.model.loader import load_model

        try:
            self.loaded = load_model(self.spec, paths, device=config.app.device, dtype=config.app.dtype)
        except Exception as err:  # handed to the main thread, which shows it as one line
            self.error = err

    def result(self, spec: str, console: Any) -> Any:
        """The early model if it is the one wanted (waiting for it with a spinner), else None."""
        if spec != self.spec:
            return None
        if self._thread is not None and self._thread.is_alive():
            with console.status("Loading the model"):
                self._thread.join()
        if self.error is not None:
            raise self.error
        return self.loaded
