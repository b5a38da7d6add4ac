"""Video input: a video becomes `num_frames` frames sampled uniformly, each sent to the vision
pool as an image of exactly one tile (448px, no thumbnail), as the InternVL model cards'
`load_video(..., max_num=1)` does, and the language service renders "Frame{i}: <image>".

The gateway decodes videos, unlike images: the frames are independent Encode calls, so they fan
out across vision replicas (and hit the embedding cache one by one) like the images of a
multi-image request. Frames are re-encoded losslessly (PNG), so the vision service sees exactly
the decoded pixels. Sources: inline bytes, `data:` URLs, http(s) URLs (through
`gateway.url_guard`, as images), and `file://` URLs only under the directory the gateway was
started with (`--video-dir`); anything else is refused.
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import av
from PIL import Image

from dvd.errors import InvalidRequest
from dvd.types import TilingOptions
from gateway.images import checked_size, decode_data_url
from gateway.url_guard import UrlGuard

# One 448px tile per frame, no thumbnail (a one-tile grid never gets one anyway).
FRAME_TILING = TilingOptions(min_tiles=1, max_tiles=1, use_thumbnail=False)
MAX_DECODED_FRAMES = 100_000  # bounds the work one request can ask the decoder for


@dataclass(frozen=True)
class VideoSource:
    """Exactly one of `data` (file bytes) and `url` (data: or file:); None frames: the default."""

    data: bytes | None = None
    url: str | None = None
    num_frames: int | None = None


def frame_indices(total: int, num_frames: int) -> list[int]:
    """The InternVL model cards' `get_index` (no bound): the middle of `num_frames` equal segments
    of frames 0..total-1. Short videos repeat frames rather than return fewer."""
    segment = (total - 1) / num_frames
    return [int(segment / 2 + round(segment * i)) for i in range(num_frames)]


def sample_frames(data: bytes, num_frames: int, max_pixels: int) -> list[bytes]:
    """Decode `data` and return `num_frames` uniformly sampled frames as PNG bytes (RGB)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise InvalidRequest("the video has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.width * stream.codec_context.height > max_pixels:
                raise InvalidRequest(f"video frames are larger than {max_pixels} pixels")
            total = stream.frames
        frames = _decode(data, frame_indices(total, num_frames)) if total > 0 else None
        if frames is None:  # no (or a wrong) frame count in the container: count by decoding
            frames = _decode(data, frame_indices(_count_frames(data), num_frames))
    except av.FFmpegError as exc:
        raise InvalidRequest(f"cannot decode video: {exc}") from exc
    if frames is None:
        raise InvalidRequest("cannot decode video: its frames could not be read")
    return frames


def _count_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        count = 0
        for _ in container.decode(video=0):
            count += 1
            if count > MAX_DECODED_FRAMES:
                raise InvalidRequest(f"video has more than {MAX_DECODED_FRAMES} frames")
    if count == 0:
        raise InvalidRequest("cannot decode video: it has no frames")
    return count


def _decode(data: bytes, wanted: list[int]) -> list[bytes] | None:
    """PNG bytes of the frames at `wanted` (in order, repeats kept); None if the video has fewer."""
    copies = Counter(wanted)
    found: dict[int, bytes] = {}
    with av.open(io.BytesIO(data)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in copies:
                found[index] = _png(frame.to_image())
            if len(found) == len(copies) or index >= MAX_DECODED_FRAMES:
                break
    if len(found) < len(copies):
        return None
    return [found[i] for i in wanted]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class VideoLoader:
    def __init__(self, max_bytes: int, video_dir: str, default_frames: int, max_frames: int,
                 max_pixels: int, guard: UrlGuard | None = None) -> None:
        self.max_bytes = max_bytes
        self.guard = guard  # http(s) video URLs; None refuses them
        self.video_dir = Path(video_dir).resolve() if video_dir else None
        self.default_frames = default_frames
        self.max_frames = max_frames
        self.max_pixels = max_pixels

    def num_frames(self, source: VideoSource) -> int:
        """How many frames `source` becomes (known before decoding: short videos repeat frames)."""
        n = source.num_frames or self.default_frames
        if not 1 <= n <= self.max_frames:
            raise InvalidRequest(f"num_frames must be in [1, {self.max_frames}], got {n}")
        return n

    async def load(self, source: VideoSource) -> list[bytes]:
        """The sampled frames as PNG bytes."""
        url = source.url or ""
        if source.data is None and url.split(":", 1)[0].lower() in ("http", "https"):
            if self.guard is None:
                raise InvalidRequest("http(s) video URLs are disabled on this gateway")
            data = checked_size(await self.guard.fetch(url, "video"), "the video at that URL", self.max_bytes)
        else:
            data = await asyncio.to_thread(self._bytes, source)
        return await asyncio.to_thread(sample_frames, data, self.num_frames(source), self.max_pixels)

    def _bytes(self, source: VideoSource) -> bytes:
        if source.data is not None:
            return checked_size(source.data, "inline video", self.max_bytes)
        url = source.url or ""
        if url.startswith("data:"):
            return checked_size(decode_data_url(url, "video"), "data: URL video", self.max_bytes)
        if url.startswith("file:"):
            return checked_size(self._read_file(url), f"video {url!r}", self.max_bytes)
        raise InvalidRequest("video_url must be a data:, http(s): or file:// URL")

    def _read_file(self, url: str) -> bytes:
        if self.video_dir is None:
            raise InvalidRequest("file:// video URLs are disabled on this gateway (start it with --video-dir)")
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidRequest(f"file:// video URLs must name a local path, got host {parsed.netloc!r}")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.video_dir) or not path.is_file():
            raise InvalidRequest(f"no video file {unquote(parsed.path)!r} under this gateway's video directory")
        if path.stat().st_size > self.max_bytes:
            raise InvalidRequest(f"video {path.name!r} is larger than {self.max_bytes} bytes")
        return path.read_bytes()

