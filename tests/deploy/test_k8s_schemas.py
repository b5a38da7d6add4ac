"""Every manifest we ship, rendered by `kubectl kustomize`, is valid for the supported Kubernetes
versions: built-in kinds by kubernetes-validate --strict (unknown fields rejected), CRDs (KEDA,
prometheus-operator, KubeRay) by the vendored schemas in schemas/."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import K8S_VERSIONS, OVERLAYS, ray_manifests, render, validation_errors


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("tree", [*OVERLAYS, "monitoring"])
def test_rendered_manifests_are_valid(tree, version):
    errors = [e for doc in render(tree) for e in validation_errors(doc, version)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_ray_manifests_are_valid(version):
    """deploy/ray (KubeRay RayService and friends), whichever of its files are Kubernetes objects."""
    errors = [e for doc in ray_manifests() for e in validation_errors(doc, version)]
    assert not errors, "\n".join(errors)
