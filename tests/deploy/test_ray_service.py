"""deploy/ray's RayServices beyond their CRD schema (test_k8s_schemas checks that): the
serveConfigV2 inside each is a valid Ray Serve config for our application, every replica fits
a worker group that offers its resources, and the Ray versions agree across the manifests, the
image and the `ray` extra."""

from __future__ import annotations

import json
import re

import pytest
import tomllib
import yaml
from dockerfile_parse import DockerfileParser
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import (
    DeploymentSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from stack.ray_serve.app import GATEWAY_SERVICER
from stack.ray_serve.config import RayAppConfig
from stack.ray_serve.deployments import GatewayIngress, LanguageDeployment, VisionDeployment
from tests.deploy.manifests import RAY, REPO, of_kind, ray_manifests

SERVICES = of_kind(ray_manifests(), "RayService")
IDS = [s["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] for s in SERVICES]
DEPLOYMENTS = {d.name for d in (VisionDeployment, LanguageDeployment, GatewayIngress)}


def serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def group_resources(group: dict) -> dict[str, float]:
    """What one Ray node of a group offers: CPUs, GPUs and custom resources (rayStartParams)."""
    params = group.get("rayStartParams", {})
    container = group["template"]["spec"]["containers"][0]
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0")
    offered = {"CPU": float(params.get("num-cpus", "0")), "GPU": float(params.get("num-gpus", gpus))}
    if "resources" in params:  # KubeRay's format: a JSON object inside a quoted string
        offered |= json.loads(params["resources"].strip('"').replace('\\"', '"'))
    return offered


def unknown_keys(config: dict) -> list[str]:
    """Keys Ray Serve would silently ignore (its schema allows extras): typos, in other words."""
    found = [f"top level: {k}" for k in set(config) - set(ServeDeploySchema.model_fields)]
    for app in config["applications"]:
        found += [f"application: {k}" for k in set(app) - set(ServeApplicationSchema.model_fields)]
        for d in app.get("deployments", []):
            found += [f"{d['name']}: {k}" for k in set(d) - set(DeploymentSchema.model_fields)]
            found += [f"{d['name']}.ray_actor_options: {k}"
                      for k in set(d.get("ray_actor_options", {})) - set(RayActorOptionsSchema.model_fields)]
            found += [f"{d['name']}.autoscaling_config: {k}"
                      for k in set(d.get("autoscaling_config", {})) - set(AutoscalingConfig.model_fields)]
    return found


def test_both_variants_are_shipped():
    assert sorted(IDS) == ["dvd-serve-ray:cpu", "dvd-serve-ray:cuda"]


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_serve_config_is_valid_for_our_application(service):
    assert unknown_keys(serve_config(service)) == []
    config = ServeDeploySchema.model_validate(serve_config(service))
    (app,) = config.applications
    assert app.import_path == "stack.ray_serve.app:build_app"
    assert config.grpc_options.grpc_servicer_functions == [GATEWAY_SERVICER]
    ports = {p["port"] for p in service["spec"]["serveService"]["spec"]["ports"]}
    assert ports == {config.http_options.port, config.grpc_options.port}
    RayAppConfig.from_args(app.args)  # the builder accepts its args
    names = {d.name for d in app.deployments}
    assert names <= DEPLOYMENTS, f"unknown deployments {names - DEPLOYMENTS}"
    for deployment in app.deployments:
        scaling = AutoscalingConfig(**deployment.autoscaling_config)
        if deployment.name in ("vision", "language"):
            assert scaling.min_replicas < scaling.max_replicas, f"{deployment.name} does not autoscale"


def test_typos_in_a_serve_config_are_caught():
    config = serve_config(SERVICES[0])
    deployment = config["applications"][0]["deployments"][0]
    deployment["max_ongoing_request"] = 1
    deployment["ray_actor_options"]["num_cpu"] = 1
    deployment["autoscaling_config"]["target_ongoing_request"] = 1
    assert len(unknown_keys(config)) == 3


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_every_replica_fits_a_worker_group(service):
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    offers = [group_resources(g) for g in cluster["workerGroupSpecs"]]
    (app,) = serve_config(service)["applications"]
    for deployment in app["deployments"]:
        actor = deployment["ray_actor_options"]
        wants = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0), **actor.get("resources", {})}
        fits = [all(offer.get(k, 0) >= v for k, v in wants.items()) for offer in offers]
        assert any(fits), (deployment["name"], wants, offers)


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_gpu_pools_get_their_own_worker_groups(service):
    """On GPUs each pool's replicas land only on its own group (DvD: separate hardware)."""
    (app,) = serve_config(service)["applications"]
    gpu_pools = {d["name"]: d["ray_actor_options"] for d in app["deployments"]
                 if d["ray_actor_options"].get("num_gpus", 0) > 0}
    offers = [group_resources(g) for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    for name, actor in gpu_pools.items():
        custom = set(actor.get("resources", {}))
        assert custom, f"{name} asks for GPUs but no pool-specific resource"
        assert all(not (custom & set(offer)) or offer["GPU"] >= actor["num_gpus"] for offer in offers)
    assert len({frozenset(a.get("resources", {})) for a in gpu_pools.values()}) == len(gpu_pools)


def test_ray_versions_agree():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    (pin,) = [re.fullmatch(r"ray\[serve\]==([\d.]+)", r)[1] for r in extra]
    dockerfile = DockerfileParser(str(RAY / "Dockerfile"))
    (image_version,) = [a.split("=", 1)[1] for s in dockerfile.structure if s["instruction"] == "ARG"
                        for a in [s["value"]] if a.startswith("RAY_VERSION=")]
    versions = {s["spec"]["rayClusterConfig"]["rayVersion"] for s in SERVICES}
    assert versions == {pin} == {image_version}
