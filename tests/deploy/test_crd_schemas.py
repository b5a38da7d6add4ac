"""The vendored CRD schemas accept what the upstream CRDs accept and reject what the API server
would (unknown fields, wrong types, missing required fields), including inside the Kubernetes
types they embed."""

from __future__ import annotations

import copy

import pytest

from tests.deploy.manifests import K8S_VERSIONS, crd_schemas, validation_errors

POD_TEMPLATE = {"spec": {"containers": [{"name": "ray", "image": "dvd-serve:cuda",
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
RAY_SERVICE = {
    "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "dvd", "namespace": "dvd"},
    "spec": {
        "serveConfigV2": "applications:\n  - name: dvd\n    import_path: dvd.ray:app\n",
        "upgradeStrategy": {"type": "NewCluster"},
        "rayClusterConfig": {
            "rayVersion": "2.49.0", "enableInTreeAutoscaling": True,
            "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 60},
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": POD_TEMPLATE},
            "workerGroupSpecs": [{"groupName": "vision", "replicas": 1, "minReplicas": 1, "maxReplicas": 4,
                                  "rayStartParams": {}, "template": POD_TEMPLATE}],
        },
    },
}
SCALED_OBJECT = {
    "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "dvd-vision"},
    "spec": {"scaleTargetRef": {"name": "dvd-vision"},
             "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090", "query": "1",
                                                              "threshold": "4"}}]},
}


def with_change(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return doc


def test_every_schema_file_is_loaded():
    assert set(crd_schemas()) == {("keda.sh/v1alpha1", "ScaledObject"), ("ray.io/v1", "RayService"),
                                  ("monitoring.coreos.com/v1", "PodMonitor")}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", [RAY_SERVICE, SCALED_OBJECT], ids=["RayService", "ScaledObject"])
def test_valid_examples_pass(doc, version):
    assert validation_errors(doc, version) == []


@pytest.mark.parametrize(("doc", "path", "value", "expected"), [
    (RAY_SERVICE, "spec.serveConfig", "x", "'serveConfig' was unexpected"),
    (RAY_SERVICE, "spec.rayClusterConfig.workerGroupSpecs.0.groupName", KeyError, "'groupName' is a required"),
    (RAY_SERVICE, "spec.upgradeStrategy.type", "Rolling", "is not one of"),
    (RAY_SERVICE, "spec.rayClusterConfig.headGroupSpec.template.spec.containers.0.gpus", 1, "'gpus' was unexpected"),
    (RAY_SERVICE, "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus", 0, "is not of type 'string'"),
    (SCALED_OBJECT, "spec.triggers", KeyError, "'triggers' is a required"),
    (SCALED_OBJECT, "spec.minReplicas", 1, "'minReplicas' was unexpected"),
    (SCALED_OBJECT, "spec.triggers.0.metricType", "Average", "is not one of"),
    (SCALED_OBJECT, "metadata.label", {}, "'label' was unexpected"),
])
def test_invalid_fields_are_rejected(doc, path, value, expected):
    errors = validation_errors(with_change(doc, path, value), K8S_VERSIONS[-1])
    assert any(expected in e for e in errors), errors
