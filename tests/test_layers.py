"""The layer contracts are enforced by import-linter: they hold on the tree as it is, and they
break when a module of the shared core imports a service (an upward import)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protos", "dvd", "vision_service", "language_service", "gateway", "stack", "tools")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": str(exe.parent), "PYTHONPATH": str(cwd)})


def _copy_tree(dst: Path) -> None:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")


def test_the_tree_keeps_every_contract(tmp_path):
    _copy_tree(tmp_path)
    result = _lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    _copy_tree(tmp_path)
    with (tmp_path / "dvd" / "codec.py").open("a") as f:
        f.write("\nimport gateway.pipeline  # noqa: E402, F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "dvd.codec -> gateway.pipeline" in result.stdout


def test_a_service_importing_another_breaks_independence(tmp_path):
    _copy_tree(tmp_path)
    with (tmp_path / "language_service" / "fetch.py").open("a") as f:
        f.write("\nimport vision_service.core  # noqa: E402, F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "independent" in result.stdout and "BROKEN" in result.stdout
