"""A preset name on the command line becomes a checkpoint written once under a root folder."""

from pathlib import Path

from .make import make_checkpoint
from .presets import PRESETS


def ensure_checkpoint(model: str, root: Path) -> Path | str:
    """A preset name becomes `root/<preset>` (written once); anything else passes through."""
    if model not in PRESETS:
        return Path(model) if Path(model).exists() else model
    path = root / model
    if not (path / "config.json").exists():
        print(f"writing the {model} random-init checkpoint to {path} ...", flush=True)
        make_checkpoint(model, path)
    return path
