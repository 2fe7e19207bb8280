"""`aidungeon serve --ray CONFIG.yaml` deploys through Ray's public API (`serve.run` of the app
with `Deployment.options`): the config's options per deployment must reach the deployments as
Ray's own config handling would apply them. No cluster is started here (the `ray` group deploys
for real); these check the options on the Deployment objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.serve", reason='ray[serve] is not installed (pip install "aidungeon[scale]")')

from ray.serve.schema import ServeDeploySchema

from aidungeon.core.errors import ConfigError
from aidungeon.server.ray_app import Engine, GameAPI, _deployment_options

SCALE = Path(__file__).resolve().parents[2] / "aidungeon" / "server" / "scale"


def app_of(config: dict[str, Any]) -> Any:
    return ServeDeploySchema.model_validate(config).applications[0]


def shipped(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SCALE / name).read_text())
    return loaded


def test_the_local_configs_options_reach_the_deployments() -> None:
    options = _deployment_options(app_of(shipped("local.yaml")))
    engine = Engine.options(**options["Engine"])  # type: ignore[attr-defined]
    game = GameAPI.options(**options["GameAPI"])  # type: ignore[attr-defined]
    scaling = engine._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (2, 3, 4)
    assert (scaling.upscale_delay_s, scaling.downscale_delay_s) == (2, 5)
    assert engine._deployment_config.max_ongoing_requests == 64
    assert engine.ray_actor_options == {"num_cpus": 0.5, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}
    router = engine._deployment_config.request_router_config
    assert router.request_router_class == "aidungeon.server.scale.routing:StoryAffinityRouter"
    assert router.request_router_kwargs == {"imbalance": 8}
    # GameAPI: fixed replicas, as the config says; the code's other settings stay.
    assert game.num_replicas == 2 and game._deployment_config.autoscaling_config is None
    assert game._deployment_config.max_ongoing_requests == 256


def test_the_kuberay_configs_serve_config_is_deployable() -> None:
    """The RayService's serveConfigV2 is the same schema; its options are accepted too."""
    service = shipped("kuberay.yaml")
    docs = service if isinstance(service, list) else [service]
    serve_config = next(d for d in docs if d and d.get("kind") == "RayService")["spec"]["serveConfigV2"]
    config = yaml.safe_load(serve_config) if isinstance(serve_config, str) else serve_config
    options = _deployment_options(app_of(config))
    engine = Engine.options(**options["Engine"])  # type: ignore[attr-defined]
    assert engine._deployment_config.autoscaling_config is not None
    assert engine._deployment_config.max_ongoing_requests > 5  # Ray's default would starve the batch


def test_fixed_replicas_and_autoscaling_replace_each_other() -> None:
    config = shipped("local.yaml")
    deployments = config["applications"][0]["deployments"]
    deployments[0] = {"name": "GameAPI", "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}
    deployments[1] = {"name": "Engine", "num_replicas": 3}
    options = _deployment_options(app_of(config))
    game = GameAPI.options(**options["GameAPI"])  # type: ignore[attr-defined]
    engine = Engine.options(**options["Engine"])  # type: ignore[attr-defined]
    assert game._deployment_config.autoscaling_config.max_replicas == 4
    assert engine.num_replicas == 3 and engine._deployment_config.autoscaling_config is None


def test_the_applications_runtime_env_is_each_deployments_under_its_own() -> None:
    config = shipped("local.yaml")
    config["applications"][0]["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": "4", "A": "1"}, "pip": ["x"]}
    options = _deployment_options(app_of(config))
    assert options["Engine"]["ray_actor_options"]["runtime_env"] == {
        "env_vars": {"OMP_NUM_THREADS": "1", "A": "1"},  # the deployment's own value wins
        "pip": ["x"],
    }
    assert options["GameAPI"]["ray_actor_options"] == {
        "num_cpus": 0.25,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "4", "A": "1"}, "pip": ["x"]},
    }


def test_a_config_for_another_app_or_deployment_is_one_clear_line() -> None:
    config = shipped("local.yaml")
    config["applications"][0]["import_path"] = "other.module:app"
    with pytest.raises(ConfigError, match=r"deploys aidungeon.server.ray_app:build_app, not other.module:app"):
        _deployment_options(app_of(config))
    config = shipped("local.yaml")
    config["applications"][0]["deployments"].append({"name": "Cache", "num_replicas": 1})
    with pytest.raises(ConfigError, match="no deployment 'Cache'"):
        _deployment_options(app_of(config))
