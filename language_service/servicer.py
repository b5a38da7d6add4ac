"""gRPC edge of the language service: protobuf in, `LanguageCore` calls, protobuf out."""

from __future__ import annotations

from dvd import convert
from dvd.deadline import Deadline
from dvd.identity import new_request_id
from language_service.core import LanguageCore
from protos.v1 import language_pb2, language_pb2_grpc


class LanguageServicer(language_pb2_grpc.LanguageDecoderServicer):
    """`LanguageDecoder`: Generate (server-streamed deltas), Abort by request id, Info."""

    def __init__(self, core: LanguageCore) -> None:
        self.core = core

    async def Generate(self, request, context):
        request_id = request.request_id or new_request_id()  # a direct caller; the gateway sends its own
        remaining = context.time_remaining()  # the caller's deadline: the fetches share it
        deltas = self.core.generate(
            request_id=request_id,
            messages=convert.messages_from_pb(request.messages),
            refs=[convert.ref_from_pb(r) for r in request.images],
            sampling=convert.sampling_from_pb(request.sampling),
            model_id=request.model_id,
            deadline=Deadline.after(remaining) if remaining is not None else None,
            cache_scope=request.cache_scope,
        )
        async for delta in deltas:
            yield convert.delta_to_pb(request_id, delta)

    async def Abort(self, request, context):
        return language_pb2.AbortResponse(found=self.core.abort(request.request_id))

    async def Info(self, request, context):
        return language_pb2.LanguageInfo(**self.core.info())
