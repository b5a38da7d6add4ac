"""Structure of the rendered overlays: each pool scales on its own (Deployment, headless Service,
PDB, autoscaler on its own metric), probes and termination fit the services' behaviour,
resources are set everywhere, and GPUs appear only in the GPU overlays."""

from __future__ import annotations

import json
import re

import pytest

from protos.v1 import gateway_pb2, language_pb2, vision_pb2
from tests.deploy.manifests import OVERLAYS, POOLS, find, of_kind, render, selects

SERVICES = {
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
    "vision": vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"].full_name,
    "language": language_pb2.DESCRIPTOR.services_by_name["LanguageDecoder"].full_name,
}
COMPONENTS = tuple(SERVICES)
IMAGE_UID = 10001  # USER in deploy/docker/Dockerfile.*


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def main_container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def arg_value(container: dict, flag: str) -> str:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(flag + "=")]
    assert len(values) == 1, f"{container['name']}: expected one {flag}=..., got {container['args']}"
    return values[0]


def selected_deployments(docs: list[dict], selector: dict) -> list[str]:
    return [d["metadata"]["name"] for d in of_kind(docs, "Deployment") if selects(selector, pod_labels(d))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_dvd_namespace(overlay):
    docs = render(overlay)
    assert [d["metadata"]["name"] for d in of_kind(docs, "Namespace")] == ["dvd"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"dvd"}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pool_has_its_own_deployment_service_pdb_and_autoscaler(overlay, pool):
    docs, name = render(overlay), f"dvd-{pool}"
    deployment = find(docs, "Deployment", name)
    assert "replicas" not in deployment["spec"], "the autoscaler owns replicas"
    assert selected_deployments(docs, deployment["spec"]["selector"]) == [name]
    service = find(docs, "Service", name)
    assert service["spec"]["clusterIP"] == "None"
    assert selected_deployments(docs, {"matchLabels": service["spec"]["selector"]}) == [name]
    assert selected_deployments(docs, find(docs, "PodDisruptionBudget", name)["spec"]["selector"]) == [name]

    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    hpas = [h for h in of_kind(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"] == target]
    scaled = [s for s in of_kind(docs, "ScaledObject") if s["spec"]["scaleTargetRef"] == target]
    metric = f"dvd:{pool}_queue_depth"
    if overlay == "overlays/keda":
        assert not hpas and len(scaled) == 1
        (trigger,) = scaled[0]["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and metric in trigger["metadata"]["query"]
    else:
        assert not scaled and len(hpas) == 1
        (spec,) = hpas[0]["spec"]["metrics"]
        assert spec["type"] == "Pods" and spec["pods"]["metric"]["name"] == metric
        assert spec["pods"]["target"]["type"] == "AverageValue"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_selector_picks_exactly_its_component(overlay):
    docs = render(overlay)
    for service in of_kind(docs, "Service"):
        assert selected_deployments(docs, {"matchLabels": service["spec"]["selector"]}) == [service["metadata"]["name"]]
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert selected_deployments(docs, pdb["spec"]["selector"]) == [pdb["metadata"]["name"]]
    names = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    for doc in of_kind(docs, "HorizontalPodAutoscaler") + of_kind(docs, "ScaledObject"):
        assert doc["spec"]["scaleTargetRef"]["name"] in names


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_native_grpc_probes(overlay, component):
    container = main_container(find(render(overlay), "Deployment", f"dvd-{component}"))
    # With TLS (components/security) the probes use the plaintext health-only port.
    probe_port = "health" if any(a.startswith("--health-port=") for a in container["args"]) else "grpc"
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe_port)
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    assert {kind: p["grpc"] for kind, p in probes.items()} == {
        "startup": {"port": grpc_port, "service": SERVICES[component]},
        "readiness": {"port": grpc_port, "service": SERVICES[component]},
        "liveness": {"port": grpc_port, "service": ""},
    }
    startup_s = probes["startup"]["periodSeconds"] * probes["startup"]["failureThreshold"]
    if component != "gateway":  # model loading: 30 min, 60 in the GPU overlays
        assert startup_s >= (1800 if overlay in ("overlays/cpu", "overlays/secure") else 3600)


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_outlasts_the_drain(overlay, component):
    deployment = find(render(overlay), "Deployment", f"dvd-{component}")
    container = main_container(deployment)
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = float(arg_value(container, "--drain-grace-s"))
    assert pre_stop_s >= 5
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + drain_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_a_memory_limit(overlay):
    for deployment in of_kind(render(overlay), "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_non_root_user(overlay):
    for deployment in of_kind(render(overlay), "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        if deployment["metadata"]["name"] != "dvd-redis":
            assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]


def test_gpus_only_in_the_gpu_overlays():
    cpu = render("overlays/cpu")
    assert "nvidia.com" not in json.dumps(cpu)
    assert not of_kind(cpu, "PersistentVolumeClaim")
    for overlay in ("overlays/gpu", "overlays/keda"):
        docs = render(overlay)
        for deployment in of_kind(docs, "Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            resources = main_container(deployment)["resources"]
            if deployment["metadata"]["name"] not in ("dvd-vision", "dvd-language"):
                assert "nvidia.com" not in json.dumps(deployment), deployment["metadata"]["name"]
                continue
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in main_container(deployment)["volumeMounts"]
            claim = volumes["models"]["persistentVolumeClaim"]
            assert "emptyDir" not in volumes["models"] and claim["readOnly"] is True
            find(docs, "PersistentVolumeClaim", claim["claimName"])


@pytest.mark.parametrize("pool", POOLS)
def test_cpu_overlay_writes_the_tiny_checkpoint_the_pools_load(pool):
    docs = render("overlays/cpu")
    deployment = find(docs, "Deployment", f"dvd-{pool}")
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert re.search(r"\bdvd make-checkpoint --preset tiny --out /models/tiny\b", " ".join(init["command"]))
    assert init["image"] == main_container(deployment)["image"]
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in main_container(deployment)["volumeMounts"]
    assert {v["name"]: v for v in spec["volumes"]}["models"] == {"name": "models", "emptyDir": {}}
    (config,) = of_kind(docs, "ConfigMap")
    assert config["data"]["DVD_MODEL_PATH"] == "/models/tiny"
