"""The Ray Serve app's config: serveConfigV2 args, Serve options per deployment, and how a local
Ray's CPUs and GPUs are shared out so that both pools fit at their max."""

from __future__ import annotations

import pytest

from stack.ray_serve.config import VISION_AUTOSCALING, DeploymentSpec, RayAppConfig
from stack.ray_serve.local import LocalOptions, local_app_config


def test_args_build_the_config_and_reject_what_belongs_elsewhere():
    cfg = RayAppConfig.from_args({"model": "/models/x", "device": "cuda", "dtype": "bfloat16"})
    assert (cfg.model, cfg.device, cfg.dtype, cfg.vision.autoscaling) == ("/models/x", "cuda", "bfloat16",
                                                                         VISION_AUTOSCALING)
    with pytest.raises(ValueError, match="unknown dvd-serve Ray app args"):
        RayAppConfig.from_args({"model": "/m", "modle_name": "x"})
    with pytest.raises(ValueError, match="deployments:"):  # per-deployment options go to Serve's own list
        RayAppConfig.from_args({"model": "/m", "vision": {"num_cpus": 2}})
    with pytest.raises(ValueError, match="model is required"):
        RayAppConfig.from_args({"model": ""})


def test_serve_options_carry_resources_and_autoscaling():
    spec = DeploymentSpec(2.0, 1.0, 8, {"min_replicas": 1, "max_replicas": 3}, {"dvd_vision": 1})
    assert spec.serve_options() == {
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 1.0, "resources": {"dvd_vision": 1}},
        "max_ongoing_requests": 8, "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
    }
    assert "resources" not in DeploymentSpec().serve_options()["ray_actor_options"]
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        DeploymentSpec(autoscaling={"min_replicas": 3, "max_replicas": 2})


@pytest.mark.parametrize(("cpus", "gpus"), [(2.0, 0.0), (16.0, 2.0)])
def test_local_pools_fit_the_machine_at_their_max(cpus, gpus):
    opts = LocalOptions(model="/m", max_vision_replicas=3, max_language_replicas=2,
                        vision_autoscaling={"target_ongoing_requests": 1})
    cfg = local_app_config(opts, cpus, gpus)
    at_max = [(cfg.vision, 3), (cfg.language, 2), (cfg.gateway, cfg.gateway.autoscaling["max_replicas"])]
    assert sum(spec.num_cpus * n for spec, n in at_max) == pytest.approx(cpus)
    assert sum(spec.num_gpus * n for spec, n in at_max) == pytest.approx(gpus)
    assert cfg.vision.autoscaling["target_ongoing_requests"] == 1  # the override
    assert cfg.vision.autoscaling["upscale_delay_s"] == VISION_AUTOSCALING["upscale_delay_s"]  # the rest kept
    assert (cfg.vision.autoscaling["max_replicas"], cfg.language.autoscaling["max_replicas"]) == (3, 2)
    assert cfg.vision_grpc_host == "127.0.0.1"  # one machine: FetchEmbedding stays on loopback
