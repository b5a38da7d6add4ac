"""A chat request's images and videos -> the flat list of images the vision pool encodes.

Each image of the conversation is one entry (with the request's tiling); a video is its sampled
frames, `num_frames` consecutive entries of one tile each. The count is known before decoding
(short videos repeat frames), so the messages' placeholders are numbered before anything loads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dvd.errors import InvalidRequest
from dvd.types import ImagePart, Message, TextPart, TilingOptions, VideoPart
from gateway.images import ImageLoader, ImageSource
from gateway.video import FRAME_TILING, VideoLoader, VideoSource

Source = ImageSource | VideoSource


@dataclass(frozen=True)
class MediaImage:
    """One image to encode: an image of the request or a video frame."""

    data: bytes
    tiling: TilingOptions


def split_media(turns, videos: VideoLoader, max_images: int, max_frames: int) -> tuple[list[Message], list[Source]]:
    """Replace each image / video in the conversation by indices into the flat image list.

    `turns` are `ChatTurn`s (role, parts of TextPart / ImageSource / VideoSource)."""
    messages: list[Message] = []
    sources: list[Source] = []
    next_index = num_images = num_frames = 0
    for turn in turns:
        parts: list[TextPart | ImagePart | VideoPart] = []
        for part in turn.parts:
            if isinstance(part, ImageSource):
                parts.append(ImagePart(next_index))
                next_index, num_images = next_index + 1, num_images + 1
            elif isinstance(part, VideoSource):
                count = videos.num_frames(part)
                parts.append(VideoPart(tuple(range(next_index, next_index + count))))
                next_index, num_frames = next_index + count, num_frames + count
            else:
                parts.append(part)
                continue
            sources.append(part)
        messages.append(Message(turn.role, tuple(parts)))
    if num_images > max_images:
        raise InvalidRequest(f"{num_images} images in one request; the limit is {max_images}")
    if num_frames > max_frames:
        raise InvalidRequest(f"{num_frames} video frames in one request; the limit is {max_frames}")
    return messages, sources


async def load_media(sources: list[Source], images: ImageLoader, videos: VideoLoader,
                     tiling: TilingOptions) -> list[MediaImage]:
    """Fetch / decode every source concurrently; flattened in order (a video -> its frames)."""

    async def load(source: Source) -> list[MediaImage]:
        if isinstance(source, VideoSource):
            return [MediaImage(frame, FRAME_TILING) for frame in await videos.load(source)]
        return [MediaImage(await images.load(source), tiling)]

    loaded = await asyncio.gather(*(load(s) for s in sources))
    return [image for group in loaded for image in group]
