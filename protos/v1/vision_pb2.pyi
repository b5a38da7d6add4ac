from protos.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("request_id", "image", "tiling", "vir", "codec", "model_id", "vir_thresholds", "vir_group_scores", "cache_scope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    VIR_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VIR_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    VIR_GROUP_SCORES_FIELD_NUMBER: _ClassVar[int]
    CACHE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: bytes
    tiling: _common_pb2.TilingOptions
    vir: _common_pb2.VirMode
    codec: _common_pb2.Codec
    model_id: str
    vir_thresholds: _common_pb2.VirThresholds
    vir_group_scores: _containers.RepeatedScalarFieldContainer[float]
    cache_scope: str
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[bytes] = ..., tiling: _Optional[_Union[_common_pb2.TilingOptions, _Mapping]] = ..., vir: _Optional[_Union[_common_pb2.VirMode, str]] = ..., codec: _Optional[_Union[_common_pb2.Codec, str]] = ..., model_id: _Optional[str] = ..., vir_thresholds: _Optional[_Union[_common_pb2.VirThresholds, _Mapping]] = ..., vir_group_scores: _Optional[_Iterable[float]] = ..., cache_scope: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("ref", "timings", "cache_hit", "num_tiles")
    REF_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    NUM_TILES_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.EmbeddingRef
    timings: _common_pb2.StageTimings
    cache_hit: bool
    num_tiles: int
    def __init__(self, ref: _Optional[_Union[_common_pb2.EmbeddingRef, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.StageTimings, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., num_tiles: _Optional[int] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("request_id", "image", "tiling", "model_id", "cache_scope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: bytes
    tiling: _common_pb2.TilingOptions
    model_id: str
    cache_scope: str
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[bytes] = ..., tiling: _Optional[_Union[_common_pb2.TilingOptions, _Mapping]] = ..., model_id: _Optional[str] = ..., cache_scope: _Optional[str] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("compress_scores", "timings", "cache_hit")
    COMPRESS_SCORES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    compress_scores: _containers.RepeatedScalarFieldContainer[float]
    timings: _common_pb2.StageTimings
    cache_hit: bool
    def __init__(self, compress_scores: _Optional[_Iterable[float]] = ..., timings: _Optional[_Union[_common_pb2.StageTimings, _Mapping]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class FetchEmbeddingRequest(_message.Message):
    __slots__ = ("key", "request_id", "access_token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: str
    request_id: str
    access_token: str
    def __init__(self, key: _Optional[str] = ..., request_id: _Optional[str] = ..., access_token: _Optional[str] = ...) -> None: ...

class EmbeddingChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class VisionInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VisionInfo(_message.Message):
    __slots__ = ("model_id", "hidden_size", "tile_size", "tokens_per_tile", "codec", "max_batch_tiles", "has_router", "device", "weight_bytes", "cache_namespace", "default_vir", "vir_relative_threshold", "vir_absolute_threshold")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_TILE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TILES_FIELD_NUMBER: _ClassVar[int]
    HAS_ROUTER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VIR_FIELD_NUMBER: _ClassVar[int]
    VIR_RELATIVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VIR_ABSOLUTE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    hidden_size: int
    tile_size: int
    tokens_per_tile: int
    codec: _common_pb2.Codec
    max_batch_tiles: int
    has_router: bool
    device: str
    weight_bytes: int
    cache_namespace: str
    default_vir: _common_pb2.VirMode
    vir_relative_threshold: float
    vir_absolute_threshold: float
    def __init__(self, model_id: _Optional[str] = ..., hidden_size: _Optional[int] = ..., tile_size: _Optional[int] = ..., tokens_per_tile: _Optional[int] = ..., codec: _Optional[_Union[_common_pb2.Codec, str]] = ..., max_batch_tiles: _Optional[int] = ..., has_router: _Optional[bool] = ..., device: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., cache_namespace: _Optional[str] = ..., default_vir: _Optional[_Union[_common_pb2.VirMode, str]] = ..., vir_relative_threshold: _Optional[float] = ..., vir_absolute_threshold: _Optional[float] = ...) -> None: ...
