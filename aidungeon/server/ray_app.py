"""The Ray Serve application: the game API and the batching engine as two autoscaled deployments.

- `Engine`: the project's batching engine on one model per replica. `generate(wire)` streams one
  request's pieces, then its result, as plain data (`scale/wire.py`). `max_ongoing_requests` is
  high (Ray's default of 5 would starve the batch) and replicas scale on requests in flight.
  Calls are routed by story (`scale/routing.py`), so a story's KV cache keeps paying across turns.
- `GameAPI`: the same FastAPI app as `aidungeon serve` (`app.create_app`), whose engine is a
  `RayEngine` over the Engine deployment's handle. Replicas hold no state the database does not:
  any replica plays any story (the session cache re-reads a story whose version moved on).

`build_app(args)` is the import path for Ray's `serve run CONFIG.yaml` / `serve deploy`, which
apply the config's per-deployment options themselves. `deploy_config` is `aidungeon serve --ray
CONFIG.yaml`: it deploys the same config through Ray's public Python API alone (`serve.start` with
the config's HTTP options, then `serve.run` of the app built from its args with each deployment's
options from the config applied by `Deployment.options`), so it needs neither Ray's dashboard nor
its private client. Code defaults below are for one machine; the YAML configs in `scale/` override
them per cluster. This module plays no game and loads no model itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from aidungeon.core.cancel import CancelToken
from aidungeon.core.errors import ConfigError
from aidungeon.server.scale.wire import Wire, request_from_wire, result_to_wire

log = logging.getLogger(__name__)

APP_NAME = "aidungeon"
IMPORT_PATH = "aidungeon.server.ray_app:build_app"
# Requests one engine replica takes at once: its batch. Beyond it, Ray queues at the caller.
ENGINE_MAX_ONGOING = 64
_END = object()


@serve.deployment(
    name="Engine",
    max_ongoing_requests=ENGINE_MAX_ONGOING,
    autoscaling_config=AutoscalingConfig(
        min_replicas=1, max_replicas=4, target_ongoing_requests=8, upscale_delay_s=5, downscale_delay_s=60
    ),
    request_router_config=RequestRouterConfig(
        # An import path, as a YAML config gives it (Ray accepts a path or a class; its stub says dict).
        request_router_class="aidungeon.server.scale.routing:StoryAffinityRouter",  # type: ignore[arg-type]
        request_router_kwargs={"imbalance": 8},
    ),
    health_check_period_s=2,
)
class Engine:
    """One model, one batching engine; streams requests from many game API replicas."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto") -> None:
        from aidungeon.model.engine import Engine as BatchingEngine
        from aidungeon.model.loader import load_model
        from aidungeon.storage.paths import default_paths

        self.loaded = load_model(model, default_paths(), device=device, dtype=dtype)
        self.engine = BatchingEngine.for_model(self.loaded)
        self.name = model
        # The engine is driven by whichever thread iterates a handle; one thread per request in
        # flight keeps the replica's event loop free and lets the requests batch together.
        self._pool = ThreadPoolExecutor(max_workers=ENGINE_MAX_ONGOING, thread_name_prefix="engine")
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.pid = os.getpid()

    def describe(self) -> dict[str, Any]:
        """What a game API replica needs to build prompts: window, device, layout and the tokenizer."""
        return {
            "name": self.name,
            "window": self.loaded.window,
            "device_type": self.engine.device_type,
            "layout": self.loaded.layout,
            "tokenizer": self.loaded.tokenizer,
        }

    async def generate(self, wire: Wire) -> AsyncIterator[dict[str, Any]]:
        """Stream `{"piece": text}` messages, then `{"result": ..., "replica": id, "pid": pid}`."""
        cancel = CancelToken()
        generation = self.engine.submit(request_from_wire(wire, cancel))
        pieces: Iterator[str] = iter(generation)
        loop = asyncio.get_running_loop()
        try:
            while (piece := await loop.run_in_executor(self._pool, next, pieces, _END)) is not _END:
                yield {"piece": piece}
        finally:
            # Also reached when the caller cancels or is gone: the job stops at its next step.
            cancel.set()
        yield {"result": result_to_wire(generation.result()), "replica": self.replica, "pid": self.pid}


@serve.deployment(name="GameAPI", num_replicas=2, max_ongoing_requests=256, health_check_period_s=2)
@serve.ingress()
class GameAPI:
    """`aidungeon serve`'s FastAPI app on a RayEngine; all replicas share one database URL."""

    # Async, as Ray's ingress wrapper requires: it awaits the engine's description.
    async def __init__(  # type: ignore[misc]
        self, engine: DeploymentHandle[Any], db: str, limits: dict[str, Any] | None = None
    ) -> None:
        from aidungeon.server.app import create_app
        from aidungeon.server.db import open_database
        from aidungeon.server.games import GameModel, Games
        from aidungeon.server.limits import Limits
        from aidungeon.server.protocols import CORS_PATHS, routers
        from aidungeon.server.scale.remote_engine import RayEngine
        from aidungeon.server.state import ServerState
        from aidungeon.storage.config_file import load_config
        from aidungeon.storage.paths import default_paths

        info = await engine.describe.remote()
        paths = default_paths()
        config = load_config(paths.config_file)
        self.engine = RayEngine(engine, info)
        model = GameModel(engine=self.engine, name=info["name"], layout=info["layout"])
        self.db = open_database(db)
        games = Games(self.db, model, config, stories_dir=paths.stories_dir)
        state = ServerState(db=self.db, games=games, limits=Limits(**(limits or {})))
        # The KoboldAI and OpenAI APIs beside the game API, as `aidungeon serve` mounts them.
        self._app = create_app(state, routers=routers(), cors_paths=CORS_PATHS)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


def build_app(args: dict[str, Any]) -> Any:
    """The application for `serve run` / `aidungeon serve --ray`: args `model` (spec), `db` (URL;
    PostgreSQL for replicas on several machines), optional `device`, `dtype` and `limits`."""
    return _build(args, {})


def _build(args: dict[str, Any], options: dict[str, dict[str, Any]]) -> Any:
    """The app from its args, each deployment with `options` (by deployment name) over the code's."""
    if not args.get("model") or not args.get("db"):
        raise ConfigError("the Ray app needs args `model` (a model spec) and `db` (a database URL)")
    _migrate_once(str(args["db"]))
    # `serve.deployment` turns each class into a Deployment; mypy still sees the class.
    engine_deployment = Engine.options(**options.get("Engine", {}))  # type: ignore[attr-defined]
    api_deployment = GameAPI.options(**options.get("GameAPI", {}))  # type: ignore[attr-defined]
    engine = engine_deployment.bind(str(args["model"]), str(args.get("device", "auto")), str(args.get("dtype", "auto")))
    return api_deployment.bind(engine, str(args["db"]), args.get("limits"))


def _migrate_once(url: str) -> None:
    """Bring the schema up to date here, once, before replicas start: PostgreSQL replicas would
    serialise on the advisory lock anyway, but SQLite has none, and two replicas migrating one
    fresh file at once collide ("table alembic_version already exists")."""
    from aidungeon.server.db import open_database

    open_database(url).dispose()


def serve_config(path: Path, announce: Callable[[str], None]) -> None:
    """`aidungeon serve --ray PATH`: connect to the cluster at RAY_ADDRESS (or start a local one),
    deploy the config, announce the address, and serve until Ctrl-C or SIGTERM; then shut Serve
    and this Ray connection down, as `serve run` does."""
    import ray

    _read_config(path)  # a bad file is one clear line before anything starts
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        announce(deploy_config(path))
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def _read_config(path: Path) -> Any:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    try:
        return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot use the Serve config {path}: {str(err).splitlines()[0]}") from None


def deploy_config(path: Path, *, wait_s: float = 600) -> str:
    """Deploy the applications of a Serve config file on the connected cluster, as `serve run
    CONFIG.yaml` does, and wait until they run; returns the HTTP address. Only Ray's public API:
    `serve.start` with the config's cluster-wide options, then `serve.run` of each application
    (this project's `build_app`, the only import path it deploys) with the config's options per
    deployment, autoscaling included. `serve.run` waits without a bound, so it runs in a thread
    while this waits at most `wait_s` for the applications to run; ConfigError otherwise."""
    config = _read_config(path)
    apps = [(app, _build(dict(app.args), _deployment_options(app))) for app in config.applications]
    serve.start(
        proxy_location=config.proxy_location,
        http_options=config.http_options.model_dump(),
        grpc_options=config.grpc_options.model_dump(),
        logging_config=config.logging_config,
    )
    deploying: Future[None] = Future()
    # A daemon thread: on a timeout this returns while `serve.run` may still be waiting.
    threading.Thread(target=_run_all, args=(apps, deploying), name="serve-run", daemon=True).start()
    _wait_running([app.name for app, _built in apps], wait_s, deploying)
    return f"http://{config.http_options.host}:{config.http_options.port}"


def _run_all(apps: list[tuple[Any, Any]], deploying: Future[None]) -> None:
    """`serve.run` each application in turn; `deploying` gets the outcome."""
    try:
        for app, built in apps:
            serve.run(
                built,
                name=app.name,
                route_prefix=app.route_prefix,
                logging_config=app.logging_config,
                external_scaler_enabled=app.external_scaler_enabled,
            )
    except Exception as err:  # handed to the waiting thread, which says it in one line
        deploying.set_exception(err)
    else:
        deploying.set_result(None)


def _deployment_options(app: Any) -> dict[str, dict[str, Any]]:
    """The options a config gives each deployment, as keyword arguments of `Deployment.options`.
    Like Ray's own config handling: what the config sets replaces the code's value, fixed
    `num_replicas` and an `autoscaling_config` exclude each other, and the application's
    `runtime_env` is every deployment's, under the deployment's own."""
    if app.import_path != IMPORT_PATH:
        raise ConfigError(
            f"aidungeon serve --ray deploys {IMPORT_PATH}, not {app.import_path} (Ray's `serve deploy` deploys any app)"
        )
    options: dict[str, dict[str, Any]] = {"Engine": {}, "GameAPI": {}}
    for deployment in app.deployments:
        if deployment.name not in options:
            raise ConfigError(f"the aidungeon app has no deployment {deployment.name!r} (it has Engine and GameAPI)")
        given = deployment.model_dump(exclude_unset=True)
        given.pop("name")
        if "num_replicas" in given and "autoscaling_config" not in given:
            given["autoscaling_config"] = None
        elif "autoscaling_config" in given and "num_replicas" not in given:
            given["num_replicas"] = None
        options[deployment.name] = given
    if app.runtime_env:
        for given in options.values():
            actor = dict(given.get("ray_actor_options") or {})  # the code sets none
            actor["runtime_env"] = _merge_env(app.runtime_env, actor.get("runtime_env") or {})
            given["ray_actor_options"] = actor
    return options


def _merge_env(outer: dict[str, Any], inner: dict[str, Any]) -> dict[str, Any]:
    """A deployment's runtime_env over its application's: its keys win, env_vars are merged."""
    merged = {**outer, **inner}
    if "env_vars" in outer or "env_vars" in inner:
        merged["env_vars"] = {**outer.get("env_vars", {}), **inner.get("env_vars", {})}
    return merged


def _wait_running(names: list[str], wait_s: float, deploying: Future[None]) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if deploying.done() and (error := deploying.exception()) is not None:
            raise ConfigError(f"the Ray app failed to deploy: {str(error).splitlines()[0]}")
        apps = serve.status().applications
        states = {name: apps[name].status if name in apps else "NOT_STARTED" for name in names}
        failed = [f"{n}: {apps[n].message}" for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            raise ConfigError("the Ray app failed to deploy: " + "; ".join(failed))
        if all(s == "RUNNING" for s in states.values()) and deploying.done():
            return
        time.sleep(1)
    raise ConfigError(f"the Ray app was not running after {wait_s:.0f} s (see `serve status`)")
