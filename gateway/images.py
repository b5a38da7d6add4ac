"""Image loading for the gateway: inline bytes, data: URLs, and http(s) URLs fetched through
`gateway.url_guard` (SSRF checks, size, time and type limits). The gateway never decodes
images; the vision pool does."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from dvd.errors import InvalidRequest
from gateway.url_guard import UrlGuard


@dataclass(frozen=True)
class ImageSource:
    """Exactly one of `data` (file bytes) and `url` (data: or http(s):)."""

    data: bytes | None = None
    url: str | None = None


class ImageLoader:
    """Inline and data: images as they are; http(s) URLs through the SSRF guard."""

    def __init__(self, max_bytes: int, guard: UrlGuard) -> None:
        self.max_bytes = max_bytes
        self.guard = guard

    async def load(self, source: ImageSource) -> bytes:
        if source.data is not None:
            return checked_size(source.data, "inline image", self.max_bytes)
        url = source.url or ""
        if url[:5].lower() == "data:":
            return checked_size(decode_data_url(url, "image"), "data: URL image", self.max_bytes)
        if url.split(":", 1)[0].lower() in ("http", "https"):
            return checked_size(await self.guard.fetch(url, "image"), "the image at that URL", self.max_bytes)
        raise InvalidRequest("image_url must be a data: or http(s): URL")

    async def close(self) -> None:
        """Nothing is held between fetches (each fetch opens its own pinned connection)."""


def decode_data_url(url: str, kind: str) -> bytes:
    """The bytes of a base64 `data:` URL; `kind` ("image", "video") is for the error message."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        example = "data:image/png;base64,..." if kind == "image" else "data:video/mp4;base64,..."
        raise InvalidRequest(f"data: {kind} URLs must be base64 encoded ({example})")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("invalid base64 in data: URL") from None


def checked_size(data: bytes, what: str, max_bytes: int) -> bytes:
    """`data` itself, once it is known to be non-empty and within `max_bytes`."""
    if not data:
        raise InvalidRequest(f"{what} is empty")
    if len(data) > max_bytes:
        raise InvalidRequest(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    return data
