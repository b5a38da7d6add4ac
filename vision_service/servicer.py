"""gRPC edge of the vision service: protobuf in, `VisionCore` calls, protobuf out."""

from __future__ import annotations

from dvd import convert
from protos.v1 import vision_pb2, vision_pb2_grpc
from vision_service.core import VisionCore


class VisionServicer(vision_pb2_grpc.VisionEncoderServicer):
    """`VisionEncoder`: Encode, Route, FetchEmbedding (server-streamed chunks) and Info over `VisionCore`."""

    def __init__(self, core: VisionCore) -> None:
        self.core = core

    async def Encode(self, request, context):
        result = await self.core.encode(
            image=request.image,
            tiling=convert.tiling_from_pb(request.tiling),
            vir=convert.vir_options_from_pb(request.vir, request.vir_thresholds, request.vir_group_scores),
            codec=convert.codec_from_pb(request.codec),
            model_id=request.model_id,
            scope=request.cache_scope,
        )
        return vision_pb2.EncodeResponse(ref=convert.ref_to_pb(result.ref), timings=convert.timings_to_pb(result.timings),
                                         cache_hit=result.cache_hit, num_tiles=result.num_tiles)

    async def Route(self, request, context):
        result = await self.core.route(request.image, convert.tiling_from_pb(request.tiling), request.model_id,
                                       request.cache_scope)
        return vision_pb2.RouteResponse(compress_scores=result.scores, timings=convert.timings_to_pb(result.timings),
                                        cache_hit=result.cache_hit)

    async def FetchEmbedding(self, request, context):
        for offset, chunk, total in self.core.chunks(request.key, request.access_token):
            yield vision_pb2.EmbeddingChunk(data=chunk, offset=offset, total_bytes=total)

    async def Info(self, request, context):
        info = self.core.info()
        return vision_pb2.VisionInfo(**{**info, "codec": convert.CODEC_TO_PB[info["codec"]],
                                        "default_vir": convert.VIR_TO_PB[info["default_vir"]]})
