"""Content keys: what changes the embeddings changes the key, and nothing else does."""

from __future__ import annotations

from dvd.cache_key import cache_namespace, content_key
from dvd.types import Codec, Compression, TilingOptions, VirMode, VirOptions

NS = cache_namespace("m@1", Codec.BF16, Compression.NONE, 1, 12, True, "off")


def key(image=b"img", tiling=TilingOptions(), vir=VirOptions(), codec=None, namespace=NS, default=Codec.BF16):
    return content_key(image, tiling, vir, codec, namespace, default)


def test_each_input_changes_the_key():
    base = key()
    assert len({base, key(image=b"other"), key(tiling=TilingOptions(max_tiles=6)),
                key(vir=VirOptions(VirMode.MAX)), key(codec=Codec.INT8),
                key(namespace=cache_namespace("m@2", Codec.BF16, Compression.NONE, 1, 12, True, "off"))}) == 6


def test_naming_the_default_codec_shares_the_default_key():
    assert key(codec=Codec.BF16) == key(codec=None)
    assert key(codec=Codec.FP32) != key(codec=None)
