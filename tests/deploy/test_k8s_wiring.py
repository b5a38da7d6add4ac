"""How the rendered pieces connect: container args resolve and parse with the services' own
flag parsers, the gateway can discover the pools through EndpointSlices (RBAC included),
NetworkPolicies admit exactly the intended callers, and every autoscaling metric is exported
by its service, scraped and served by the adapter."""

from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest
import yaml

from gateway.discovery import KubernetesDiscovery, from_spec
from tests.deploy.manifests import K8S, OVERLAYS, POOLS, find, of_kind, render, selects
from tests.deploy.test_k8s_pools import COMPONENTS, main_container, pod_labels

MODULES = {"gateway": "gateway", "vision": "vision_service", "language": "language_service"}
FIELD_VALUES = {"status.podIP": "10.1.2.3", "metadata.namespace": "dvd"}


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it (ConfigMaps by their hashed name)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else FIELD_VALUES[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def expanded_args(docs: list[dict], container: dict) -> list[str]:
    env = container_env(docs, container)
    args = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), a) for a in container["args"]]
    unresolved = [a for a in args if "$(" in a]
    assert not unresolved, f"{container['name']}: kubelet would pass these literally: {unresolved}"
    return args


def parse(module: str, args: list[str]):
    parse_config = importlib.import_module(f"{module}.__main__").parse_config
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return parse_config(args)
        except SystemExit:
            pass
    raise AssertionError(f"python -m {module} rejects its args: {stderr.getvalue()}")


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_resolve_and_parse(overlay, component, tmp_path):
    docs = render(overlay)
    container = main_container(find(docs, "Deployment", f"dvd-{component}"))
    assert container["command"] == ["python", "-m", MODULES[component]]
    cfg = parse(MODULES[component], _with_secret_files(container, expanded_args(docs, container), tmp_path))
    assert cfg.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (cfg.grpc_port if component == "gateway" else cfg.port) == ports["grpc"]
    if component == "vision":
        assert cfg.advertise == f"{FIELD_VALUES['status.podIP']}:{ports['grpc']}"
    if component != "gateway":
        assert cfg.model == container_env(docs, container)["DVD_MODEL_PATH"]
        assert cfg.metrics_port == ports["metrics"]


def _with_secret_files(container: dict, args: list[str], tmp_path) -> list[str]:
    """The args with paths under the container's mounted secrets pointing at stand-in files (the
    services read or check those files at startup; the real ones come from the cluster)."""
    mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["mountPath"].startswith("/etc/dvd/")]
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        if sep and any(value.startswith(m + "/") for m in mounts):
            stand_in = tmp_path / value.lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("stand-in-key tenant\n")
            arg = f"{flag}={stand_in}"
        out.append(arg)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_discovers_each_pool_through_its_endpointslices(overlay):
    docs = render(overlay)
    deployment = find(docs, "Deployment", "dvd-gateway")
    args = expanded_args(docs, main_container(deployment))
    for pool in POOLS:
        (spec,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{pool}=")]
        discovery = from_spec(spec)
        assert isinstance(discovery, KubernetesDiscovery)
        service = find(docs, "Service", discovery.service)
        assert discovery.namespace == service["metadata"]["namespace"] and service["spec"]["clusterIP"] == "None"
        assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(find(docs, "Deployment", f"dvd-{pool}")))
        assert discovery.port in {p["name"] for p in service["spec"]["ports"]}

    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    account = find(docs, "ServiceAccount", pod["serviceAccountName"])
    bindings = [b for b in of_kind(docs, "RoleBinding") if {"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                                             "namespace": account["metadata"]["namespace"]} in b["subjects"]]
    rules = [r for b in bindings for r in find(docs, "Role", b["roleRef"]["name"])["rules"]]
    assert any("discovery.k8s.io" in r["apiGroups"] and "endpointslices" in r["resources"]
               and {"get", "list", "watch"} <= set(r["verbs"]) for r in rules)
    for pool in POOLS:  # the pools never talk to the API server
        assert find(docs, "Deployment", f"dvd-{pool}")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def allowed_callers(docs: list[dict], target: str, port: int) -> set[str]:
    """Components whose pods may open `port` on `target`'s pods ("*" when anyone may)."""
    labels = pod_labels(find(docs, "Deployment", f"dvd-{target}"))
    components = {pod_labels(d)["app.kubernetes.io/component"]: pod_labels(d) for d in of_kind(docs, "Deployment")}
    callers: set[str] = set()
    for policy in of_kind(docs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
                continue
            if "from" not in rule:
                callers.add("*")
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    callers |= {c for c, pl in components.items() if selects(peer["podSelector"], pl)}
                elif peer.get("namespaceSelector"):
                    callers.add("ns:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    return callers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_the_intended_callers(overlay):
    docs = render(overlay)
    deny = [p for p in of_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and deny[0]["spec"]["policyTypes"] == ["Ingress"] and not deny[0]["spec"].get("ingress")
    assert allowed_callers(docs, "gateway", 8000) == allowed_callers(docs, "gateway", 50050) == {"*"}
    assert allowed_callers(docs, "vision", 50051) == {"gateway", "language"}
    assert allowed_callers(docs, "language", 50052) == {"gateway"}
    assert allowed_callers(docs, "redis", 6379) == {"gateway", "vision", "language"}
    for pool in POOLS:
        assert allowed_callers(docs, pool, 9090) == {"ns:monitoring"}
        assert allowed_callers(docs, pool, 8080) == set()


@pytest.mark.parametrize("component", COMPONENTS)
def test_prometheus_scrape_annotations_name_a_metrics_port(component):
    template = find(render("overlays/cpu"), "Deployment", f"dvd-{component}")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    ports = {p["containerPort"]: p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports[int(annotations["prometheus.io/port"])] == ("http" if component == "gateway" else "metrics")


def test_every_autoscaling_metric_is_scraped_and_served():
    wanted = {h["spec"]["metrics"][0]["pods"]["metric"]["name"]
              for h in of_kind(render("overlays/cpu"), "HorizontalPodAutoscaler") if h["spec"]["metrics"][0]["type"] == "Pods"}
    queried = {m for s in of_kind(render("overlays/keda"), "ScaledObject")
               for m in re.findall(r"dvd:[a-z_]+", s["spec"]["triggers"][0]["metadata"]["query"])}
    assert wanted == queried == {f"dvd:{pool}_queue_depth" for pool in POOLS}
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    assert wanted <= {r["name"]["as"] for r in adapter["rules"]["custom"]}
    for custom in adapter["rules"]["custom"]:
        assert custom["name"]["as"] in custom["seriesQuery"]
        assert set(custom["resources"]["overrides"]) == {"namespace", "pod"}  # Pods metrics
    (monitor,) = of_kind(render("monitoring"), "PodMonitor")
    scraped = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for component in COMPONENTS:
        deployment = find(render("overlays/cpu"), "Deployment", f"dvd-{component}")
        assert selects(monitor["spec"]["selector"], pod_labels(deployment))
        assert scraped & {p["name"] for p in main_container(deployment)["ports"]}


def test_language_autoscaling_target_leaves_headroom_below_the_decode_slots():
    """dvd:language_queue_depth counts running + waiting requests: a target at or above
    --max-running-seqs would only scale once requests queue for a slot."""
    docs = render("overlays/cpu")
    slots = int(of_kind(docs, "ConfigMap")[0]["data"]["DVD_MAX_RUNNING_SEQS"])
    target = float(find(docs, "HorizontalPodAutoscaler", "dvd-language")["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    (trigger,) = find(render("overlays/keda"), "ScaledObject", "dvd-language")["spec"]["triggers"]
    assert 0 < target < slots and float(trigger["metadata"]["threshold"]) == target
