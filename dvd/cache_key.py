"""Content keys for image embeddings. Identical images with identical options under the same
model share one key, so a repeated image is encoded once. The gateway and the vision service
compute it the same way: the gateway to look up cached embeddings before calling the vision
pool, the vision service to store them."""

from __future__ import annotations

import hashlib

from dvd.types import Codec, Compression, TilingOverrides, VirMode


def cache_namespace(model_id: str, codec: Codec, compression: Compression, min_tiles: int, max_tiles: int,
                    use_thumbnail: bool, vir: VirMode) -> str:
    """Everything besides the request that decides the embeddings: a vision pool's defaults."""
    text = f"{model_id}|{codec.value}|{compression.value}|{min_tiles}|{max_tiles}|{use_thumbnail}|{vir.value}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def content_key(image: bytes, tiling: TilingOverrides, vir: VirMode | None, codec: Codec | None, namespace: str) -> str:
    """blake2b-128 of the image bytes, the request's overrides and the pool's namespace."""
    digest = hashlib.blake2b(image, digest_size=16)
    overrides = (f"|{tiling.min_tiles}|{tiling.max_tiles}|{tiling.use_thumbnail}"
                 f"|{vir.value if vir else ''}|{codec.value if codec else ''}|{namespace}")
    digest.update(overrides.encode())
    return digest.hexdigest()
