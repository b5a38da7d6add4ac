"""A ref whose embeddings cannot be fetched (its vision replica is gone, or answers NOT_FOUND)
fails the Generate before any token with FAILED_PRECONDITION, the status the gateway reads as
EmbeddingLost (re-encode, don't blame this replica); and the fetch ends by the caller's deadline."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from dvd.errors import EmbeddingLost, from_grpc_error
from dvd.grpc_server import GrpcService
from protos.v1 import common_pb2, language_pb2, vision_pb2_grpc
from stack.launcher import free_port
from tests.language_service.test_grpc_cancel import _read_all, language_server


class _EmptyVision(vision_pb2_grpc.VisionEncoderServicer):
    """A vision replica that has just restarted: it holds no embeddings (FetchEmbedding: NOT_FOUND).
    A key "slow" is never answered; the fetch's deadline is recorded."""

    def __init__(self) -> None:
        self.fetch_deadlines: list[float] = []

    async def FetchEmbedding(self, request, context):
        if request.key == "slow":
            self.fetch_deadlines.append(context.time_remaining())
            await asyncio.sleep(60)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"embedding {request.key!r} is not in this replica's store")
        yield


def _request(info, location: str, key: str = "k") -> language_pb2.GenerateRequest:
    ref = common_pb2.EmbeddingRef(key=key, location=location, num_tokens=4, tile_tokens=[4],
                                  codec=common_pb2.CODEC_FP32, shape=[4, info.hidden_size], num_bytes=16 * info.hidden_size,
                                  checksum="0" * 32, model_id=info.model_id)
    message = language_pb2.ChatMessage(role="user", content=[language_pb2.ContentPart(image_index=0),
                                                             language_pb2.ContentPart(text="?")])
    return language_pb2.GenerateRequest(request_id="lost", messages=[message], images=[ref])


async def _lost(stub, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _read_all(stub.Generate(request, timeout=30))
    return failed.value


async def test_a_dead_or_emptied_vision_replica_is_reported_as_a_lost_embedding(tiny_ckpt):
    vision = GrpcService(["dvd.v1.VisionEncoder"])
    port = vision.bind("127.0.0.1", 0)
    servicer = _EmptyVision()
    vision_pb2_grpc.add_VisionEncoderServicer_to_server(servicer, vision.server)
    await vision.start()
    try:
        async with language_server(tiny_ckpt) as (stub, _):
            info = await stub.Info(language_pb2.LanguageInfoRequest())
            for location in (f"grpc://127.0.0.1:{free_port()}", f"grpc://127.0.0.1:{port}"):  # gone; restarted empty
                err = await _lost(stub, _request(info, location))
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
                assert isinstance(from_grpc_error(err), EmbeddingLost)
                assert "embedding lost" in err.details()
            with pytest.raises(grpc.aio.AioRpcError) as late:  # the caller allows 2 s; the fetch gets what is left
                await _read_all(stub.Generate(_request(info, f"grpc://127.0.0.1:{port}", key="slow"), timeout=2))
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert len(servicer.fetch_deadlines) == 1 and servicer.fetch_deadlines[0] < 3  # not fetch_timeout_s (30)
    finally:
        await vision.server.stop(0)
