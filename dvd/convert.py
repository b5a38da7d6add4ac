"""Protobuf <-> domain conversion (`from_pb` / `to_pb`). Only servicers and clients call
these; the rest of the code sees `dvd.types` objects."""

from __future__ import annotations

from dvd.errors import InvalidRequest
from dvd.types import (
    Codec,
    Compression,
    Delta,
    EmbeddingRef,
    FinishReason,
    GuidedDecoding,
    GuideKind,
    ImagePart,
    Logprob,
    Message,
    SamplingParams,
    StageTimings,
    TextPart,
    TilingOptions,
    TokenLogprobs,
    Usage,
    VideoPart,
    VirMode,
    VirOptions,
)
from protos.v1 import common_pb2, language_pb2

CODEC_TO_PB = {
    Codec.FP32: common_pb2.CODEC_FP32,
    Codec.BF16: common_pb2.CODEC_BF16,
    Codec.FP16: common_pb2.CODEC_FP16,
    Codec.FP8_E4M3: common_pb2.CODEC_FP8_E4M3,
    Codec.INT8: common_pb2.CODEC_INT8,
}
CODEC_FROM_PB = {v: k for k, v in CODEC_TO_PB.items()}
COMPRESSION_TO_PB = {
    Compression.NONE: common_pb2.COMPRESSION_NONE,
    Compression.ZSTD: common_pb2.COMPRESSION_ZSTD,
    Compression.LZ4: common_pb2.COMPRESSION_LZ4,
}
COMPRESSION_FROM_PB = {v: k for k, v in COMPRESSION_TO_PB.items()}
COMPRESSION_FROM_PB[common_pb2.COMPRESSION_UNSPECIFIED] = Compression.NONE
VIR_TO_PB = {VirMode.AUTO: common_pb2.VIR_MODE_AUTO, VirMode.OFF: common_pb2.VIR_MODE_OFF, VirMode.MAX: common_pb2.VIR_MODE_MAX}
VIR_FROM_PB = {v: k for k, v in VIR_TO_PB.items()}
FINISH_TO_PB = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: common_pb2.FINISH_REASON_ABORT,
}
FINISH_FROM_PB = {v: k for k, v in FINISH_TO_PB.items()}


def codec_from_pb(value: int) -> Codec | None:
    """None for CODEC_UNSPECIFIED (the service default applies)."""
    if value == common_pb2.CODEC_UNSPECIFIED:
        return None
    if value not in CODEC_FROM_PB:
        raise InvalidRequest(f"unknown codec enum value {value}")
    return CODEC_FROM_PB[value]


def vir_from_pb(value: int) -> VirMode | None:
    if value == common_pb2.VIR_MODE_UNSPECIFIED:
        return None
    if value not in VIR_FROM_PB:
        raise InvalidRequest(f"unknown vir enum value {value}")
    return VIR_FROM_PB[value]


def vir_options_from_pb(mode: int, thresholds: common_pb2.VirThresholds | None,
                        group_scores=()) -> VirOptions:
    """A request's router settings; unset fields stay None (the vision service's defaults)."""
    relative = absolute = None
    if thresholds is not None:
        relative = thresholds.relative if thresholds.HasField("relative") else None
        absolute = thresholds.absolute if thresholds.HasField("absolute") else None
    return VirOptions(vir_from_pb(mode), relative, absolute, tuple(group_scores))


def vir_thresholds_to_pb(vir: VirOptions) -> common_pb2.VirThresholds:
    pb = common_pb2.VirThresholds()
    if vir.relative_threshold is not None:
        pb.relative = vir.relative_threshold
    if vir.absolute_threshold is not None:
        pb.absolute = vir.absolute_threshold
    return pb


def ref_to_pb(ref: EmbeddingRef) -> common_pb2.EmbeddingRef:
    return common_pb2.EmbeddingRef(
        key=ref.key,
        location=ref.location,
        num_tokens=ref.num_tokens,
        tile_tokens=list(ref.tile_tokens),
        codec=CODEC_TO_PB[ref.codec],
        shape=list(ref.shape),
        num_bytes=ref.num_bytes,
        checksum=ref.checksum,
        model_id=ref.model_id,
        compression=COMPRESSION_TO_PB[ref.compression],
        fallback_location=ref.fallback_location,
        access_token=ref.access_token,
    )


def ref_from_pb(pb: common_pb2.EmbeddingRef) -> EmbeddingRef:
    codec = codec_from_pb(pb.codec)
    if codec is None or len(pb.shape) != 2 or not pb.tile_tokens:
        raise InvalidRequest(f"malformed EmbeddingRef {pb.key!r}: needs codec, 2-d shape and tile_tokens")
    if sum(pb.tile_tokens) != pb.shape[0] or pb.num_tokens != pb.shape[0]:
        raise InvalidRequest(f"EmbeddingRef {pb.key!r}: tile_tokens, num_tokens and shape disagree")
    return EmbeddingRef(
        key=pb.key,
        location=pb.location,
        tile_tokens=tuple(pb.tile_tokens),
        codec=codec,
        shape=(pb.shape[0], pb.shape[1]),
        num_bytes=pb.num_bytes,
        checksum=pb.checksum,
        model_id=pb.model_id,
        compression=COMPRESSION_FROM_PB.get(pb.compression, Compression.NONE),
        fallback_location=pb.fallback_location,
        access_token=pb.access_token,
    )


def tiling_from_pb(pb: common_pb2.TilingOptions) -> TilingOptions:
    return TilingOptions(
        min_tiles=pb.min_tiles or None,
        max_tiles=pb.max_tiles or None,
        use_thumbnail=pb.use_thumbnail if pb.HasField("use_thumbnail") else None,
    )


def tiling_to_pb(t: TilingOptions) -> common_pb2.TilingOptions:
    pb = common_pb2.TilingOptions(min_tiles=t.min_tiles or 0, max_tiles=t.max_tiles or 0)
    if t.use_thumbnail is not None:
        pb.use_thumbnail = t.use_thumbnail
    return pb


def sampling_from_pb(pb: common_pb2.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_tokens=pb.max_tokens or None,
        temperature=pb.temperature,
        top_p=pb.top_p or 1.0,
        top_k=pb.top_k,
        seed=pb.seed if pb.HasField("seed") else None,
        stop=tuple(pb.stop),
        stop_token_ids=tuple(pb.stop_token_ids),
        ignore_eos=pb.ignore_eos,
        guided=guided_from_pb(pb.guided) if pb.HasField("guided") else None,
        logprobs=pb.logprobs,
        top_logprobs=pb.top_logprobs,
    )


def guided_from_pb(pb: common_pb2.GuidedDecoding) -> GuidedDecoding:
    kind = pb.WhichOneof("guide")
    if kind is None:
        raise InvalidRequest("GuidedDecoding sets none of json_object, json_schema, regex, choice")
    if kind == "json_schema":
        return GuidedDecoding(GuideKind.JSON_SCHEMA, schema=pb.json_schema.schema, strict=pb.json_schema.strict)
    if kind == "regex":
        return GuidedDecoding(GuideKind.REGEX, regex=pb.regex)
    if kind == "choice":
        return GuidedDecoding(GuideKind.CHOICE, choices=tuple(pb.choice.choices))
    return GuidedDecoding(GuideKind.JSON_OBJECT)


def guided_to_pb(g: GuidedDecoding) -> common_pb2.GuidedDecoding:
    if g.kind is GuideKind.JSON_SCHEMA:
        return common_pb2.GuidedDecoding(json_schema=common_pb2.JsonSchema(schema=g.schema, strict=g.strict))
    if g.kind is GuideKind.REGEX:
        return common_pb2.GuidedDecoding(regex=g.regex)
    if g.kind is GuideKind.CHOICE:
        return common_pb2.GuidedDecoding(choice=common_pb2.Choices(choices=list(g.choices)))
    return common_pb2.GuidedDecoding(json_object=True)


def sampling_to_pb(s: SamplingParams) -> common_pb2.SamplingParams:
    pb = common_pb2.SamplingParams(
        max_tokens=s.max_tokens or 0,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
    )
    if s.seed is not None:
        pb.seed = s.seed
    if s.guided is not None:
        pb.guided.CopyFrom(guided_to_pb(s.guided))
    return pb


def _logprob_to_pb(lp: Logprob) -> common_pb2.Logprob:
    return common_pb2.Logprob(token_id=lp.token_id, token=lp.token, token_bytes=lp.token_bytes, logprob=lp.logprob)


def _logprob_from_pb(pb: common_pb2.Logprob) -> Logprob:
    return Logprob(pb.token_id, pb.token, pb.token_bytes, pb.logprob)


def logprobs_to_pb(entries: list[TokenLogprobs]) -> list[common_pb2.TokenLogprobs]:
    return [common_pb2.TokenLogprobs(chosen=_logprob_to_pb(e.chosen), top=[_logprob_to_pb(t) for t in e.top])
            for e in entries]


def logprobs_from_pb(pbs) -> list[TokenLogprobs]:
    return [TokenLogprobs(_logprob_from_pb(e.chosen), tuple(_logprob_from_pb(t) for t in e.top)) for e in pbs]


def timings_to_pb(t: StageTimings) -> common_pb2.StageTimings:
    return common_pb2.StageTimings(
        queue_ns=t.queue_ns, encode_ns=t.encode_ns, transfer_ns=t.transfer_ns, prefill_ns=t.prefill_ns, decode_ns=t.decode_ns
    )


def timings_from_pb(pb: common_pb2.StageTimings) -> StageTimings:
    return StageTimings(pb.queue_ns, pb.encode_ns, pb.transfer_ns, pb.prefill_ns, pb.decode_ns)


def usage_to_pb(u: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, image_tokens=u.image_tokens,
                            cached_tokens=u.cached_tokens)


def usage_from_pb(pb: common_pb2.Usage) -> Usage:
    return Usage(pb.prompt_tokens, pb.completion_tokens, pb.image_tokens, pb.cached_tokens)


def _part_to_pb(p: TextPart | ImagePart | VideoPart) -> language_pb2.ContentPart:
    if isinstance(p, TextPart):
        return language_pb2.ContentPart(text=p.text)
    if isinstance(p, VideoPart):
        return language_pb2.ContentPart(video=language_pb2.VideoFrames(image_indices=list(p.indices)))
    return language_pb2.ContentPart(image_index=p.index)


def messages_to_pb(messages: list[Message]) -> list[language_pb2.ChatMessage]:
    return [language_pb2.ChatMessage(role=m.role, content=[_part_to_pb(p) for p in m.parts]) for m in messages]


def messages_from_pb(pbs) -> list[Message]:
    out = []
    for m in pbs:
        parts = []
        for p in m.content:
            kind = p.WhichOneof("part")
            if kind is None:
                raise InvalidRequest("a content part has neither text, image_index nor video")
            if kind == "video":
                if not p.video.image_indices:
                    raise InvalidRequest("a video part has no frames")
                parts.append(VideoPart(tuple(p.video.image_indices)))
            else:
                parts.append(TextPart(p.text) if kind == "text" else ImagePart(p.image_index))
        out.append(Message(role=m.role, parts=tuple(parts)))
    return out


def delta_to_pb(request_id: str, d: Delta) -> language_pb2.GenerateResponse:
    pb = language_pb2.GenerateResponse(request_id=request_id, token_ids=d.token_ids, text=d.text,
                                       logprobs=logprobs_to_pb(d.logprobs))
    if d.finish_reason is not None:
        pb.finish_reason = FINISH_TO_PB[d.finish_reason]
    if d.usage is not None:
        pb.usage.CopyFrom(usage_to_pb(d.usage))
    if d.timings is not None:
        pb.timings.CopyFrom(timings_to_pb(d.timings))
    return pb


def delta_from_pb(pb) -> Delta:
    """Works for GenerateResponse and gateway ChatResponse (same field names)."""
    final = pb.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
    return Delta(
        token_ids=list(pb.token_ids),
        text=pb.text,
        logprobs=logprobs_from_pb(pb.logprobs),
        finish_reason=FINISH_FROM_PB[pb.finish_reason] if final else None,
        usage=usage_from_pb(pb.usage) if final else None,
        timings=timings_from_pb(pb.timings) if final else None,
    )
