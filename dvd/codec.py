"""Embedding codecs: tensor [num_tokens, hidden] <-> bytes, plus an optional lossless layer.

Raw codecs (fp32, bf16, fp16) are bit-exact for their dtype. fp8-e4m3 and int8 keep one
float32 scale per token (row), so a token with large activations does not crush the
precision of the others. Layout of a quantised blob: [scales: num_tokens x f32][values].
"""

from __future__ import annotations

import hashlib

import torch

from dvd.errors import DataCorrupted
from dvd.types import Codec, Compression

_RAW_DTYPES = {Codec.FP32: torch.float32, Codec.BF16: torch.bfloat16, Codec.FP16: torch.float16}
_FP8_MAX = 448.0  # largest finite float8_e4m3fn value
_INT8_MAX = 127.0


def checksum(data: bytes) -> str:
    """blake2b-128 hex digest: fast, and collisions are not a concern at these sizes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def bytes_per_token(codec: Codec, hidden_size: int) -> int:
    if codec in _RAW_DTYPES:
        return hidden_size * _RAW_DTYPES[codec].itemsize
    return hidden_size + 4  # one byte per value + a float32 scale


def encode(features: torch.Tensor, codec: Codec, compression: Compression = Compression.NONE) -> bytes:
    """features: [num_tokens, hidden] floating tensor (any device) -> blob bytes."""
    if features.dim() != 2:
        raise ValueError(f"expected [num_tokens, hidden], got {tuple(features.shape)}")
    x = features.detach().to("cpu")
    if codec in _RAW_DTYPES:
        raw = _tensor_bytes(x.to(_RAW_DTYPES[codec]))
    elif codec is Codec.INT8:
        raw = _encode_scaled(x.float(), _INT8_MAX, lambda v: v.round().clamp(-127, 127).to(torch.int8))
    elif codec is Codec.FP8_E4M3:
        raw = _encode_scaled(x.float(), _FP8_MAX, lambda v: v.to(torch.float8_e4m3fn))
    else:
        raise ValueError(f"unknown codec {codec}")
    return _compress(raw, compression)


def decode(
    data: bytes,
    codec: Codec,
    shape: tuple[int, int],
    compression: Compression = Compression.NONE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Blob bytes -> [num_tokens, hidden] tensor of `dtype` on the CPU."""
    raw = _decompress(data, compression)
    num_tokens, hidden = shape
    try:
        if codec in _RAW_DTYPES:
            out = _from_bytes(raw, _RAW_DTYPES[codec], num_tokens * hidden).view(num_tokens, hidden)
        elif codec in (Codec.INT8, Codec.FP8_E4M3):
            qdtype = torch.int8 if codec is Codec.INT8 else torch.float8_e4m3fn
            scales = _from_bytes(raw[: 4 * num_tokens], torch.float32, num_tokens)
            values = _from_bytes(raw[4 * num_tokens :], qdtype, num_tokens * hidden)
            out = values.view(num_tokens, hidden).float() * scales[:, None]
        else:
            raise ValueError(f"unknown codec {codec}")
    except (RuntimeError, ValueError) as exc:
        raise DataCorrupted(f"embedding blob does not match {codec.value} {list(shape)}: {exc}") from exc
    return out.to(dtype)


def _encode_scaled(x: torch.Tensor, qmax: float, quantise) -> bytes:
    # x: [N, H] float32; scale per row so that the row's absmax maps to qmax
    scales = x.abs().amax(dim=1).clamp(min=1e-12) / qmax  # [N]
    q = quantise(x / scales[:, None])
    return _tensor_bytes(scales) + _tensor_bytes(q)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # View as uint8 so that dtypes numpy lacks (bf16, fp8) serialise too.
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _from_bytes(raw: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes, expected {expected}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)


def _compress(raw: bytes, compression: Compression) -> bytes:
    if compression is Compression.NONE:
        return raw
    if compression is Compression.ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(raw)
    if compression is Compression.LZ4:
        import lz4.frame

        return lz4.frame.compress(raw)
    raise ValueError(f"unknown compression {compression}")


def _decompress(data: bytes, compression: Compression) -> bytes:
    try:
        if compression is Compression.ZSTD:
            import zstandard

            return zstandard.ZstdDecompressor().decompress(data)
        if compression is Compression.LZ4:
            import lz4.frame

            return lz4.frame.decompress(data)
    except Exception as exc:  # the libraries raise their own error types
        raise DataCorrupted(f"cannot decompress {compression.value} blob: {exc}") from exc
    return data
