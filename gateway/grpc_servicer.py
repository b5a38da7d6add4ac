"""gRPC front end: `Gateway.Chat` and `ListModels` over `Pipeline.chat`. Both check the API key
in the call's `authorization` metadata (`Bearer KEY`) when the gateway has keys; health and
reflection on the same port stay open (probes)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from dvd import convert
from dvd.errors import InvalidRequest
from dvd.identity import new_request_id
from dvd.types import SamplingParams, TextPart
from gateway.auth import Authenticator
from gateway.images import ImageSource
from gateway.pipeline import Pipeline
from gateway.requests import ChatRequest, ChatTurn
from gateway.video import VideoSource
from protos.v1 import gateway_pb2, gateway_pb2_grpc


def chat_request_from_pb(pb: gateway_pb2.ChatRequest, tenant: str = "") -> ChatRequest:
    turns = []
    for turn in pb.messages:
        if turn.role not in ("system", "user", "assistant"):
            raise InvalidRequest("a message role must be system, user or assistant", param="messages.role")
        parts = []
        for part in turn.content:
            kind = part.WhichOneof("part")
            if kind in ("image", "video") and turn.role != "user":
                raise InvalidRequest("only user messages may contain images or videos")
            if kind == "image":
                source = part.image
                is_data = source.WhichOneof("source") == "data"
                parts.append(ImageSource(data=source.data) if is_data else ImageSource(url=source.url))
            elif kind == "video":
                video = part.video
                data = video.data if video.WhichOneof("source") == "data" else None
                parts.append(VideoSource(data=data, url=None if data is not None else video.url,
                                         num_frames=video.num_frames or None))
            else:
                parts.append(TextPart(part.text))
        turns.append(ChatTurn(turn.role, tuple(parts)))
    sampling = convert.sampling_from_pb(pb.sampling) if pb.HasField("sampling") else SamplingParams()
    return ChatRequest(
        messages=tuple(turns), sampling=sampling, model=pb.model, tiling=convert.tiling_from_pb(pb.tiling),
        vir=convert.vir_options_from_pb(pb.vir, pb.vir_thresholds), codec=convert.codec_from_pb(pb.codec),
        request_id=pb.request_id or new_request_id(), tenant=tenant,
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """The public gRPC API: `Gateway.Chat` (server-streamed) and `ListModels`, over `Pipeline`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.auth = Authenticator(pipeline.cfg.api_keys, pipeline.cfg.tenant_header)

    def _tenant(self, context) -> str:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        header = metadata.get(self.auth.tenant_header) if self.auth.tenant_header else None
        return self.auth.tenant(metadata.get("authorization"), header)

    async def Chat(self, request, context):
        # The client's deadline becomes the request's: every hop after this one gets what is left.
        remaining = context.time_remaining()
        req = chat_request_from_pb(request, self._tenant(context))
        if remaining is not None:
            req = replace(req, timeout_s=max(remaining, 1e-3))
        async with contextlib.aclosing(self.pipeline.chat(req)) as deltas:  # a cancelled call closes it at once
            async for delta in deltas:
                pb = convert.delta_to_pb(req.request_id, delta)
                yield gateway_pb2.ChatResponse(
                    request_id=req.request_id, text=pb.text, token_ids=pb.token_ids, finish_reason=pb.finish_reason,
                    usage=pb.usage, timings=pb.timings, cached_images=delta.cached_images, logprobs=pb.logprobs,
                )

    async def ListModels(self, request, context):
        self._tenant(context)
        cfg = self.pipeline.cfg
        return gateway_pb2.ListModelsResponse(models=[gateway_pb2.ModelCard(id=cfg.model_name, root=cfg.model_root)])
