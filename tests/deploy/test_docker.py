"""The container images, checked without a Docker engine: the Dockerfiles parsed with
dockerfile-parse (stages, user, healthcheck, torch pinned before the project), the sources they
COPY built into a wheel that carries every entrypoint, and the HEALTHCHECK script run against a
real gRPC health server."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from concurrent import futures

import grpc
import pytest
import tomllib
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dvd.config import GatewayConfig, LanguageConfig, VisionConfig
from tests.deploy.manifests import REPO
from tests.deploy.test_k8s_pools import IMAGE_UID

DOCKER = REPO / "deploy" / "docker"
FLAVORS = ("cpu", "cuda")
HEALTHCHECK = DOCKER / "healthcheck.py"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def stages(flavor: str) -> list[list[dict]]:
    """The Dockerfile's instructions (comments dropped), one list per FROM."""
    parser = DockerfileParser(fileobj=io.BytesIO((DOCKER / f"Dockerfile.{flavor}").read_bytes()))
    result: list[list[dict]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            result.append([])
        if result and item["instruction"] != "COMMENT":
            result[-1].append(item)
    return result


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def arg_default(stage: list[dict], name: str) -> str:
    (value,) = [v.split("=", 1)[1].strip('"') for v in values(stage, "ARG") if v.startswith(name + "=")]
    return value


def copy_sources(flavor: str) -> list[str]:
    """Paths the build stage copies from the build context."""
    sources = []
    for value in values(stages(flavor)[0], "COPY"):
        *srcs, _dest = value.split()
        sources += [s for s in srcs if not s.startswith("--")]
    return sources


@pytest.mark.parametrize("flavor", FLAVORS)
def test_final_stage_runs_as_non_root_with_a_healthcheck(flavor):
    build, final = stages(flavor)
    assert values(final, "USER") == [f"{IMAGE_UID}:{IMAGE_UID}"]
    assert any(f"--uid {IMAGE_UID}" in run for run in values(final, "RUN"))
    (check,) = values(final, "HEALTHCHECK")
    assert re.search(r"--start-period=\d+s", check) and check.split("CMD", 1)[1].strip() == '["dvd-healthcheck"]'
    copies = values(final, "COPY")
    assert "--from=build /opt/venv /opt/venv" in copies
    assert "--chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/dvd-healthcheck" in copies
    assert "PATH=/opt/venv/bin:$PATH" in " ".join(values(final, "ENV"))
    assert json.loads(values(final, "CMD")[0])[0] == "dvd"
    assert set(" ".join(values(final, "EXPOSE")).split()) == {"8000", "50050", "50051", "50052", "9090"}
    assert not values(final, "ENTRYPOINT"), "the role is the container command: python -m <service> | dvd ..."


@pytest.mark.parametrize("flavor", FLAVORS)
def test_torch_is_pinned_and_installed_before_the_project(flavor):
    build = stages(flavor)[0]
    makefile_pin = re.search(r"pip install -q torch==([\d.]+)", (REPO / "Makefile").read_text())[1]
    assert arg_default(build, "TORCH_VERSION") == makefile_pin
    runs = values(build, "RUN")
    torch_at = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    assert "> /opt/torch-constraint.txt" in runs[torch_at]
    extras = ["gpu", "k8s"] if flavor == "cuda" else ["k8s"]
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    project = re.escape(f'".[{",".join(extras)}]"')
    project_at = next(i for i, r in enumerate(runs) if re.search(rf"pip install [^&]*\s{project}(\s|$)", r))
    assert torch_at < project_at and "--constraint /opt/torch-constraint.txt" in runs[project_at]
    if flavor == "cpu":
        assert arg_default(build, "TORCH_INDEX_URL").endswith("/whl/cpu")
        assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_at]
        assert "torch.version.cuda is None" in runs[project_at]
    else:
        assert any(dep.startswith("flash-attn") for dep in PYPROJECT["project"]["optional-dependencies"]["gpu"])
        flash_at = next(i for i, r in enumerate(runs) if "flash-attn" in r)
        assert torch_at < flash_at < project_at and "--no-build-isolation" in runs[flash_at]
        assert 'CUDA_VERSION%%.*' in runs[torch_at]  # torch's CUDA major must match the toolkit's


def test_both_images_copy_every_package_and_only_what_the_dockerignore_admits():
    assert copy_sources("cpu") == copy_sources("cuda")
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {s for s in copy_sources("cpu") if (REPO / s).is_dir()}
    assert copied == packages
    for source in copy_sources("cpu"):
        assert list(REPO.glob(source)) or "[" in source, f"COPY {source}: no such path"
    for flavor in FLAVORS:
        patterns = [line.strip() for line in (DOCKER / f"Dockerfile.{flavor}.dockerignore").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
        assert patterns[0] == "*", "exclude everything, then admit the sources"
        admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
        wanted = {s.replace("README.m[d]", "README.md") for s in copy_sources(flavor)} | {"deploy/docker/healthcheck.py"}
        assert wanted <= admitted


def test_copied_sources_build_a_wheel_with_every_entrypoint(tmp_path):
    context = tmp_path / "src"
    context.mkdir()
    for source in copy_sources("cpu"):
        for path in REPO.glob(source):
            copy = shutil.copytree if path.is_dir() else shutil.copy
            copy(path, context / path.name, **({"ignore": shutil.ignore_patterns("__pycache__")} if path.is_dir() else {}))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("gateway", "vision_service", "language_service"):
        assert f"{module}/__main__.py" in names
    assert "tools/cli.py" in names and any(n.startswith("protos/v1/") and n.endswith(".proto") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dvd = tools.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _load_healthcheck():
    spec = importlib.util.spec_from_file_location("dvd_healthcheck", HEALTHCHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def test_healthcheck_reports_liveness_and_readiness(health_server):
    addr, servicer = health_server
    check = _load_healthcheck().main
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("dvd.v1.VisionEncoder", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check(["--addr", addr]) == 0
    assert check(["--addr", addr, "--service", "dvd.v1.VisionEncoder"]) == 1
    servicer.set("dvd.v1.VisionEncoder", health_pb2.HealthCheckResponse.SERVING)
    assert check(["--addr", addr, "--service", "dvd.v1.VisionEncoder"]) == 0
    assert check(["--addr", addr, "--service", "dvd.v1.Nope"]) == 1  # NOT_FOUND
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    assert check(["--addr", closed, "--timeout-s", "0.5"]) == 1


def test_healthcheck_runs_standalone_from_its_environment(health_server):
    addr, servicer = health_server
    servicer.set("dvd.v1.Gateway", health_pb2.HealthCheckResponse.SERVING)
    env = {**os.environ, "DVD_HEALTH_ADDR": addr, "DVD_HEALTH_SERVICE": "dvd.v1.Gateway"}
    assert subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=60).returncode == 0
    assert HEALTHCHECK.read_text().startswith("#!/usr/bin/env python3\n")


def test_healthcheck_default_addresses_are_the_services_default_ports():
    defaults = _load_healthcheck().DEFAULT_ADDRS
    ports = [GatewayConfig.__dataclass_fields__["grpc_port"].default, VisionConfig.__dataclass_fields__["port"].default,
             LanguageConfig.__dataclass_fields__["port"].default]
    assert defaults == tuple(f"127.0.0.1:{p}" for p in ports)
