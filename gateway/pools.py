"""The gateway's interface to the two pools. `Pipeline` only ever sees these Protocols; the
gRPC pools (`gateway.grpc_pools`) and the Ray Serve pools (`stack.ray_serve.pools`) implement
them. Everything crossing this interface is a plain `dvd.types` object, never protobuf."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from dvd.deadline import Deadline
from dvd.types import (
    Codec,
    Delta,
    EmbeddingRef,
    EncodeResult,
    Message,
    RouteResult,
    SamplingParams,
    TilingOptions,
    VirMode,
    VirOptions,
)


@dataclass(frozen=True)
class PoolInfo:
    """What the gateway needs to know about the vision pool's model, asked once."""

    cache_namespace: str  # VisionInfo.cache_namespace: enters every content key
    has_router: bool  # an InternVL3.5-Flash checkpoint: the ViR router can run
    default_vir: VirMode  # the mode a request without `vir` gets
    default_codec: Codec | None  # VisionInfo.codec: a request naming it shares the default's cache key

    def routes(self, mode: VirMode | None) -> bool:
        """Whether a request in `mode` runs the router's auto decision."""
        return self.has_router and (mode or self.default_vir) is VirMode.AUTO


class Pool(Protocol):
    """Lifecycle and health, common to both pools."""

    async def start(self) -> None:
        """Begin discovery and health checks; return once the first replica set is known."""

    async def healthy(self) -> bool:
        """Whether at least one replica can take work now."""

    async def close(self) -> None:
        """Stop background work and close connections."""


class VisionPool(Pool, Protocol):
    """Images in, embedding references out. Encode is idempotent (content-keyed)."""

    async def info(self) -> PoolInfo:
        """The pool's model facts, asked once and then remembered."""

    async def encode(self, image: bytes, tiling: TilingOptions, vir: VirOptions, codec: Codec | None,
                     request_id: str, affinity: str = "", scope: str = "",
                     deadline: Deadline | None = None) -> EncodeResult:
        """Encode one image; `affinity` names the replica that should own it (its cache key);
        `scope` is the tenant's cache namespace (`dvd.cache_key.tenant_scope`); the call
        (retries included) ends by `deadline`."""

    async def route(self, image: bytes, tiling: TilingOptions, request_id: str, affinity: str = "",
                    scope: str = "", deadline: Deadline | None = None) -> RouteResult:
        """Router scores of one image's tiles (phase one of a multi-image ViR `auto` request)."""


class LanguagePool(Pool, Protocol):
    """Messages and embedding references in, a stream of token deltas out."""

    def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                 sampling: SamplingParams, deadline: Deadline | None = None, scope: str = "") -> AsyncIterator[Delta]:
        """Stream one reply; the last delta carries finish_reason, usage and timings. Raises
        `EmbeddingLost` (before any delta) when a ref's embeddings cannot be fetched. `scope` is
        the tenant's cache namespace: the replica reuses cached KV prefixes within it only."""
