"""Video input at the gateway: uniform frame sampling (as the InternVL model cards do it), PyAV
decoding, sources and their limits, and how requests carry videos (REST and gRPC)."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
from PIL import Image

from dvd.errors import InvalidRequest
from dvd.types import ImagePart, TextPart, VideoPart, VirMode, VirOptions
from gateway.grpc_servicer import chat_request_from_pb
from gateway.images import ImageSource
from gateway.media import split_media
from gateway.protocol import ChatCompletionRequest
from gateway.requests import ChatTurn
from gateway.video import FRAME_TILING, VideoLoader, VideoSource, frame_indices, sample_frames
from protos.v1 import common_pb2, gateway_pb2
from tests.conftest import video_bytes


def model_card_indices(num_frames: int, num_segments: int) -> list[int]:
    """`get_index(bound=None, fps, max_frame, first_idx=0, num_segments)` from the InternVL cards."""
    start, end = -100000, 100000
    max_frame, fps = num_frames - 1, 8.0
    start_idx = max(0, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


@pytest.mark.parametrize(("total", "n"), [(16, 8), (300, 8), (17, 32), (5, 8), (1, 3), (100, 1)])
def test_frame_indices_are_the_model_cards(total, n):
    assert frame_indices(total, n) == model_card_indices(total, n)


@pytest.fixture(scope="module")
def video():
    return video_bytes(16)


def _decoded(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_sampled_frames_are_the_decoded_frames_at_those_indices(video):
    frames = sample_frames(video, 8, max_pixels=10**6)
    decoded = _decoded(video)
    assert len(decoded) == 16 and len(frames) == 8
    for png, index in zip(frames, frame_indices(16, 8)):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), decoded[index])
    # Short videos repeat frames instead of returning fewer.
    assert len(sample_frames(video, 32, max_pixels=10**6)) == 32


def test_h264_and_bad_videos(video):
    assert len(sample_frames(video_bytes(9, codec="libx264"), 4, max_pixels=10**6)) == 4
    with pytest.raises(InvalidRequest, match="cannot decode video"):
        sample_frames(b"not a video at all" * 10, 8, max_pixels=10**6)
    with pytest.raises(InvalidRequest, match="larger than"):
        sample_frames(video, 8, max_pixels=64 * 47)


def _loader(video_dir="", max_bytes=10**7) -> VideoLoader:
    return VideoLoader(max_bytes, str(video_dir), default_frames=8, max_frames=32, max_pixels=10**6)


async def test_sources_data_url_and_file_under_the_video_dir(video, tmp_path):
    data_url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    assert len(await _loader().load(VideoSource(url=data_url))) == 8
    assert len(await _loader().load(VideoSource(data=video, num_frames=3))) == 3
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a clip.mp4").write_bytes(video)
    (tmp_path / "secret.mp4").write_bytes(video)
    allowed = _loader(tmp_path / "clips")
    assert len(await allowed.load(VideoSource(url=f"file://{tmp_path}/clips/a%20clip.mp4"))) == 8
    for url in (f"file://{tmp_path}/secret.mp4", f"file://{tmp_path}/clips/../secret.mp4", "file://evil.com/x.mp4"):
        with pytest.raises(InvalidRequest):
            await allowed.load(VideoSource(url=url))
    with pytest.raises(InvalidRequest, match="--video-dir"):
        await _loader().load(VideoSource(url=f"file://{tmp_path}/clips/a%20clip.mp4"))
    with pytest.raises(InvalidRequest, match="limit"):
        await _loader(max_bytes=100).load(VideoSource(data=video))
    with pytest.raises(InvalidRequest, match="http"):
        await _loader().load(VideoSource(url="https://example.com/v.mp4"))


def test_videos_take_consecutive_image_slots():
    turns = (ChatTurn("user", (VideoSource(data=b"v", num_frames=3), TextPart("and"), VideoSource(data=b"w"))),)
    turns += (ChatTurn("user", (ImageSource(data=b"i"), TextPart("?"))),)
    messages, sources = split_media(turns, _loader(), max_images=4, max_frames=16)
    assert messages[0].parts == (VideoPart((0, 1, 2)), TextPart("and"), VideoPart(tuple(range(3, 11))))
    assert messages[1].parts == (ImagePart(11), TextPart("?")) and len(sources) == 3
    with pytest.raises(InvalidRequest, match="video frames"):
        split_media(turns, _loader(), max_images=4, max_frames=10)
    with pytest.raises(InvalidRequest, match="num_frames"):
        split_media((ChatTurn("user", (VideoSource(data=b"v", num_frames=33),)),), _loader(), 4, 64)


def test_rest_and_grpc_requests_carry_videos_and_router_settings():
    body = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}, "num_frames": 4},
        {"type": "text", "text": "what happens?"}]}],
        "vir": "auto", "vir_thresholds": {"relative": 0.3}}
    req = ChatCompletionRequest.model_validate(body).to_chat_request("r")
    assert req.messages[0].parts[0] == VideoSource(url="data:video/mp4;base64,AAAA", num_frames=4)
    assert req.vir == VirOptions(VirMode.AUTO, 0.3, None)
    with pytest.raises(InvalidRequest, match="only user messages"):
        bad = {"messages": [{"role": "assistant", "content": [body["messages"][0]["content"][0]]}]}
        ChatCompletionRequest.model_validate(bad).to_chat_request("r")

    video = gateway_pb2.VideoInput(data=b"mp4", num_frames=0)
    pb = gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[gateway_pb2.ChatContentPart(video=video)])],
        vir=common_pb2.VIR_MODE_MAX, vir_thresholds=common_pb2.VirThresholds(absolute=0.7))
    req = chat_request_from_pb(pb)
    assert req.messages[0].parts == (VideoSource(data=b"mp4", num_frames=None),)
    assert req.vir == VirOptions(VirMode.MAX, None, 0.7)


def test_frames_are_one_tile_without_thumbnail():
    assert (FRAME_TILING.min_tiles, FRAME_TILING.max_tiles, FRAME_TILING.use_thumbnail) == (1, 1, False)
