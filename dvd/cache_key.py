"""Content keys for image embeddings. Identical images with identical options under the same
model share one key, so a repeated image is encoded once. The gateway and the vision service
compute it the same way: the gateway to look up cached embeddings before calling the vision
pool, the vision service to store them."""

from __future__ import annotations

import hashlib

from dvd.types import Codec, Compression, TilingOptions, VirOptions


def cache_namespace(model_id: str, codec: Codec, compression: Compression, min_tiles: int, max_tiles: int,
                    use_thumbnail: bool, vir: str) -> str:
    """Everything besides the request that decides the embeddings: a vision pool's defaults.

    `vir` is the pool's router defaults as text (mode and auto thresholds)."""
    text = f"{model_id}|{codec.value}|{compression.value}|{min_tiles}|{max_tiles}|{use_thumbnail}|{vir}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def tenant_scope(tenant: str) -> str:
    """The opaque cache scope of a tenant ("" for none): what travels to the vision pool, so
    neither tenant names nor API keys leave the gateway."""
    return hashlib.blake2b(f"tenant|{tenant}".encode(), digest_size=12).hexdigest() if tenant else ""


def content_key(image: bytes, tiling: TilingOptions, vir: VirOptions, codec: Codec | None, namespace: str,
                default_codec: Codec | None = None, scope: str = "") -> str:
    """blake2b-128 of the image bytes, the request's overrides, the pool's namespace and the
    tenant's `scope` (so no two tenants share a key). A request that names the pool's default
    codec gets the same key as one that names none."""
    codec = None if codec is default_codec else codec
    digest = hashlib.blake2b(image, digest_size=16)
    overrides = (f"|{tiling.min_tiles}|{tiling.max_tiles}|{tiling.use_thumbnail}"
                 f"|{vir.key_text()}|{codec.value if codec else ''}|{namespace}|{scope}")
    digest.update(overrides.encode())
    return digest.hexdigest()


def route_key(image: bytes, tiling: TilingOptions, namespace: str, scope: str = "") -> str:
    """The key of an image's router scores and ViT features: what decides them is the image and
    its tiles, not the router mode or the codec. The gateway also routes both phases of a
    multi-image `auto` request by it, so the second phase finds the first one's ViT features."""
    digest = hashlib.blake2b(image, digest_size=16)
    digest.update(f"|route|{tiling.min_tiles}|{tiling.max_tiles}|{tiling.use_thumbnail}|{namespace}|{scope}".encode())
    return digest.hexdigest()
