"""A checkpoint's identity: both halves of a split deployment must load the same one, and
cached embeddings are only valid for the model that produced them."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path


def model_identity(checkpoint_dir: str | Path) -> str:
    """`<dir name>@<12 hex>` from config.json and the weight files' names and sizes.

    Cheap (no weight bytes are read) yet changes whenever the config or the weights' layout
    does; two replicas pointed at copies of one checkpoint agree."""
    root = Path(checkpoint_dir)
    digest = hashlib.blake2b(digest_size=6)
    digest.update((root / "config.json").read_bytes())
    for path in sorted(root.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return f"{root.name}@{digest.hexdigest()}"


def new_request_id() -> str:
    """The one request-id format (OpenAI's `chatcmpl-` prefix), made once where a request enters
    the system and carried unchanged on every hop, in logs and in the reply."""
    return f"chatcmpl-{uuid.uuid4().hex}"
