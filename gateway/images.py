"""Image loading for the gateway: inline bytes, data: URLs, and http(s) URLs fetched
within size and time limits. The gateway never decodes images; the vision pool does."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

import httpx

from dvd.errors import InvalidRequest


@dataclass(frozen=True)
class ImageSource:
    """Exactly one of `data` (file bytes) and `url` (data: or http(s):)."""

    data: bytes | None = None
    url: str | None = None


class ImageLoader:
    def __init__(self, max_bytes: int, timeout_s: float, allow_http: bool) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allow_http = allow_http
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=3)

    async def load_all(self, sources: list[ImageSource]) -> list[bytes]:
        return list(await asyncio.gather(*(self.load(s) for s in sources)))

    async def load(self, source: ImageSource) -> bytes:
        if source.data is not None:
            return checked_size(source.data, "inline image", self.max_bytes)
        url = source.url or ""
        if url.startswith("data:"):
            return checked_size(decode_data_url(url, "image"), "data: URL image", self.max_bytes)
        if url.startswith(("http://", "https://")):
            if not self.allow_http:
                raise InvalidRequest("http(s) image URLs are disabled on this gateway; send a data: URL")
            return await self._fetch(url)
        raise InvalidRequest(f"image_url must be a data: or http(s): URL, got {url[:40]!r}")

    async def close(self) -> None:
        await self._client.aclose()


    async def _fetch(self, url: str) -> bytes:
        try:
            async with asyncio.timeout(self.timeout_s), self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InvalidRequest(f"fetching image {url!r}: HTTP {response.status_code}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise InvalidRequest(f"image at {url!r} is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise InvalidRequest(f"fetching image {url!r} took longer than {self.timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise InvalidRequest(f"fetching image {url!r} failed: {exc}") from exc
        return checked_size(b"".join(chunks), f"image at {url!r}", self.max_bytes)


def decode_data_url(url: str, kind: str) -> bytes:
    """The bytes of a base64 `data:` URL; `kind` ("image", "video") is for the error message."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        example = "data:image/png;base64,..." if kind == "image" else "data:video/mp4;base64,..."
        raise InvalidRequest(f"data: {kind} URLs must be base64 encoded ({example})")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"invalid base64 in data: URL: {exc}") from exc


def checked_size(data: bytes, what: str, max_bytes: int) -> bytes:
    """`data` itself, once it is known to be non-empty and within `max_bytes`."""
    if not data:
        raise InvalidRequest(f"{what} is empty")
    if len(data) > max_bytes:
        raise InvalidRequest(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    return data
