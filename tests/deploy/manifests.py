"""Helpers for the deploy tests: render kustomize trees with the real `kubectl kustomize`,
validate built-in kinds with kubernetes-validate (strict) and CRDs against the vendored schemas
in schemas/ (their embedded Kubernetes types resolve to kubernetes-validate's definitions of
the same Kubernetes version)."""

from __future__ import annotations

import functools
import importlib.resources
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
RAY = REPO / "deploy" / "ray"
SCHEMAS = Path(__file__).parent / "schemas"
OVERLAYS = ("overlays/cpu", "overlays/gpu", "overlays/keda", "overlays/secure")
# The oldest Kubernetes the manifests support (native preStop sleep and PDB
# unhealthyPodEvictionPolicy are on by default there) and a current one.
K8S_VERSIONS = ("1.31", "1.34")
POOLS = ("vision", "language")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: it renders deploy/k8s (`kubectl kustomize`); install kubectl >= 1.27")
    return path


@functools.cache
def _render(tree: str) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / tree)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {tree} failed:\n{out.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(tree: str) -> list[dict]:
    """The resources `kubectl kustomize deploy/k8s/<tree>` prints (a fresh copy to mutate)."""
    return json.loads(json.dumps(_render(tree)))


def ray_manifests() -> list[dict]:
    """deploy/ray's Kubernetes objects: its kustomization rendered, or its YAML files as they are."""
    if (RAY / "kustomization.yaml").exists():
        out = subprocess.run([kubectl(), "kustomize", str(RAY)], capture_output=True, text=True, timeout=120, check=True)
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    docs = []
    for path in sorted(RAY.rglob("*.y*ml")) if RAY.exists() else []:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and "kind" in d]
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels + matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, present = labels.get(expr["key"]), expr["key"] in labels
        op = expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr.get("values", [])) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): schema} of every vendored CRD schema."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


@functools.cache
def _k8s_definitions(version: str) -> Resource:
    full = [v for v in all_versions() if v.startswith(version + ".")][-1]
    path = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{full}-local-strict"
    return Resource.from_contents(json.loads((path / "_definitions.json").read_text()))


@functools.cache
def crd_validator(api_version: str, kind: str, version: str) -> jsonschema.Draft202012Validator:
    schema = crd_schemas()[(api_version, kind)]
    registry = Registry().with_resource("https://kubernetes.io/api/_definitions.json", _k8s_definitions(version))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(doc: dict, version: str) -> list[str]:
    """Why `doc` is invalid for Kubernetes `version` (empty when valid): built-in kinds by
    kubernetes-validate --strict, CRDs by their vendored schema; any other kind is an error."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crd_schemas():
        errors = crd_validator(*key, version).iter_errors(doc)
        return [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{name}: {'.'.join(map(str, err.absolute_path))}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{name}: {err.message} (a CRD needs a schema in tests/deploy/schemas)"]
    return []
