"""The transformers releases pyproject admits are the ones tested: `make test` runs the suite on
the venv's (newest) release, then `make test-floor` the release-sensitive tests on the oldest
admitted one, put first on PYTHONPATH with DVD_TRANSFORMERS_FLOOR naming it."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parents[2]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def test_the_floor_is_pyprojects_lower_bound_and_is_what_the_floor_run_imports():
    floor = re.search(r"^TRANSFORMERS_FLOOR := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    bound = re.search(r'"transformers>=([\d.]+),<(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert _release(bound.group(1)) == _release(floor)[:2]
    installed = _release(transformers.__version__)
    assert installed == _release(metadata.version("transformers"))  # the module and its metadata agree
    assert _release(floor) <= installed < (int(bound.group(2)),)
    if os.environ.get("DVD_TRANSFORMERS_FLOOR"):
        assert transformers.__version__ == os.environ["DVD_TRANSFORMERS_FLOOR"] == floor
