"""`aidungeon serve`: wiring for the server (options, model, database, players), then uvicorn.

It parses, loads and connects; the server itself lives in `aidungeon/server/`. `serve users ...`
manages the players and their tokens in the same database.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from typing import Any

from aidungeon.core.config import Config
from aidungeon.core.errors import ConfigError
from aidungeon.storage.paths import Paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    parser.add_argument("--db", help="database URL (default: SQLite in the data folder); postgresql+psycopg://...")
    parser.add_argument("--model", help="preset, model folder, .gguf file or cached hub id")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="where the model runs")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), help="weight precision")
    parser.add_argument("--max-running", type=int, default=16, help="turns generated at once (batched together)")
    parser.add_argument("--max-waiting", type=int, default=64, help="turns waiting beyond those; more get 503")
    parser.add_argument("--max-stories", type=int, default=200, help="stories one player may keep")
    parser.add_argument("--turns-per-minute", type=float, default=30.0, help="each player's turn rate")
    parser.add_argument(
        "--ray",
        metavar="CONFIG.yaml",
        help='serve on a Ray cluster from a Serve config (pip install "aidungeon[scale]"); other options are ignored',
    )
    commands = parser.add_subparsers(dest="serve_command", metavar="users")
    users = commands.add_parser("users", help="add, list or remove players (each gets a bearer token)")
    users.add_argument("action", choices=["add", "list", "rm"])
    users.add_argument("name", nargs="?")


def run_serve(args: argparse.Namespace, paths: Paths, config: Config, console: Any) -> int:
    if args.ray and args.serve_command is None:
        return _serve_ray(args.ray, console)
    from aidungeon.server.db import default_url, open_database

    url = args.db or default_url(paths.ensure(paths.data_dir))
    db = open_database(url)
    try:
        if args.serve_command == "users":
            return _users(db, args.action, args.name, console)
        return _serve(args, paths, config, db, console)
    finally:
        db.dispose()


def _serve_ray(config: str, console: Any) -> int:
    """The Ray Serve app (aidungeon/server/ray_app.py) from a config, until Ctrl-C."""
    from pathlib import Path

    try:
        from aidungeon.server.ray_app import serve_config
    except ImportError:
        raise ConfigError('--ray needs Ray Serve: pip install "aidungeon[scale]"') from None

    def announce(url: str) -> None:
        console.print(f"aidungeon is serving on Ray at {url}/ (Ctrl-C stops it)", markup=False)

    serve_config(Path(config), announce)
    return 0


def _users(db: Any, action: str, name: str | None, console: Any) -> int:
    from aidungeon.server.auth import Players

    players = Players(db)
    if action == "list":
        for player in players.all():
            console.print(f"{player.name}  (added {player.created_at:%Y-%m-%d %H:%M})", markup=False)
        return 0
    if not name:
        raise ConfigError(f"usage: aidungeon serve users {action} NAME")
    if action == "rm":
        players.remove(name)
        console.print(f"Removed {name}; their token no longer works.", markup=False)
        return 0
    token = players.add(name)
    console.print(f"Added {name}. Their bearer token, shown only now: {token}", markup=False, soft_wrap=True)
    return 0


def _serve(args: argparse.Namespace, paths: Paths, config: Config, db: Any, console: Any) -> int:
    from aidungeon.server.auth import Players

    if not _is_loopback(args.host) and not Players(db).any():
        raise ConfigError(
            f"refusing to listen on {args.host} with no players: anyone who reaches it could play. "
            "Add one with `aidungeon serve users add NAME`, or keep the default --host 127.0.0.1"
        )
    sock = _listen(args.host, args.port)
    app = _build_app(args, paths, config, db, console)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    console.print(f"aidungeon is serving at http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops it)", markup=False)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=120))
    server.run(sockets=[sock])
    return 0


def _build_app(args: argparse.Namespace, paths: Paths, config: Config, db: Any, console: Any) -> Any:
    from aidungeon.cli.models import absolute_if_local, engine_for, load_model_shown
    from aidungeon.server.app import create_app
    from aidungeon.server.games import GameModel, Games
    from aidungeon.server.limits import Limits
    from aidungeon.server.protocols import CORS_PATHS, routers
    from aidungeon.server.state import ServerState

    try:
        limits = Limits(
            max_running=args.max_running,
            max_waiting=args.max_waiting,
            max_stories=args.max_stories,
            turns_per_minute=args.turns_per_minute,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    spec = absolute_if_local(config.app.model)
    loaded = load_model_shown(config, spec, paths, console)
    model = GameModel(engine=engine_for(loaded), name=spec, layout=loaded.layout)
    games = Games(db, model, config, stories_dir=paths.stories_dir)
    # The KoboldAI and OpenAI APIs beside the game API, on the same engine, queue and tokens.
    return create_app(ServerState(db=db, games=games, limits=limits), routers=routers(), cors_paths=CORS_PATHS)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a taken port is one clear line."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
