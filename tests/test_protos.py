"""The committed generated code must be exactly what the pinned grpcio-tools generates."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_up_to_date(tmp_path):
    shutil.copytree(ROOT / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    protos = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "protos" / "v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--grpc_python_out=.",
                    "--pyi_out=.", *protos], cwd=tmp_path, check=True)
    generated = sorted((tmp_path / "protos" / "v1").glob("*_pb2*"))
    assert len(generated) == 3 * len(protos)
    for fresh in generated:
        committed = ROOT / "protos" / "v1" / fresh.name
        assert committed.exists(), f"{fresh.name} is not committed; run `make protos`"
        assert committed.read_text() == fresh.read_text(), f"{fresh.name} is stale; run `make protos`"


def test_every_enum_starts_with_unspecified():
    from protos.v1 import common_pb2

    for enum in common_pb2.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values[0].number == 0 and enum.values[0].name.endswith("_UNSPECIFIED"), enum.name


def test_every_field_is_commented():
    """Each field line in the .proto files has a comment line right above it (or is a oneof)."""
    for proto in (ROOT / "protos" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "package", "option"))
            if is_field:
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} has no comment: {stripped}"
