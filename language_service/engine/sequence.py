"""A request inside the engine: prompt, image features, sampling state, which KV blocks it
holds, how far its tokens are cached, and the output so far.

The scheduler reads and advances the bookkeeping fields; the runner reads them to index the
paged KV cache; nothing else is passed between the two.

Positions [0, num_prefill) are written by prefill chunks, later ones by decode steps, which feed
the token at `num_cached_tokens` and sample only once the cache holds every token but the last.
After a preemption (its blocks taken back) a sequence starts over from position 0 with its output
kept: the prompt and the tokens already streamed are recomputed, nothing is sampled or emitted
twice.

`block_hash(k)` names the content of positions [0, (k+1) * block_size): the prefix cache's key
(`block_manager.py`). It chains every earlier block's, so equal hashes mean equal prefixes; the
block where an image's placeholders start adds that image's features digest (`image_keys`), so
every later block covers it, while blocks before it stay shareable with prompts that show a
different image there (or none); the chain starts from the caller's `cache_scope`, so no tenant
reads another's cached prefix."""

from __future__ import annotations

import enum
import hashlib
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dvd.types import Delta, FinishReason, SamplingParams, StageTimings, TokenLogprobs, Usage
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.guided import GuideState
from language_service.engine.logprobs import LogprobBuffer
from language_service.engine.stops import StopStrings


class Status(enum.Enum):
    WAITING = "waiting"  # queued (or preempted), owns no KV
    RUNNING = "running"  # owns KV blocks: prefilling, then decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    image_features: torch.Tensor | None  # [num_image_tokens, hidden], in placeholder order
    sampling: SamplingParams
    max_tokens: int
    detokenizer: IncrementalDetokenizer
    emit: Callable[[Delta | Exception], None]  # called from the engine thread
    num_image_tokens: int = 0
    transfer_ns: int = 0
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    block_table: list[int] = field(default_factory=list)  # KV block ids, in position order
    num_cached_tokens: int = 0  # positions whose K/V are already in the cache
    num_prefill: int = 0  # positions written by prefill chunks (set at admission)
    num_preemptions: int = 0
    arrived_ns: int = field(default_factory=time.perf_counter_ns)
    scheduled_ns: int = 0
    first_token_ns: int = 0
    abort_requested: bool = False
    guide: GuideState | None = None  # the grammar's matcher, for guided decoding
    logprob_buffer: LogprobBuffer | None = None  # when the request asked for logprobs
    cache_scope: str = ""  # the tenant's opaque cache scope: prefix blocks are shared within it only
    # (first placeholder position, `features_digest`) of each image, in prompt order. When not
    # given, one key for all the features at position 0: correct, only less shareable.
    image_keys: tuple[tuple[int, bytes], ...] = ()
    block_hashes: list[bytes] = field(default_factory=list)  # of blocks 0, 1, ... (as far as asked)
    num_committed_blocks: int = 0  # leading blocks of block_table registered in the prefix cache
    num_cached_prompt_tokens: int = 0  # prompt positions the prefix cache held at first admission (usage)

    def __post_init__(self) -> None:
        self.stops = StopStrings(self.sampling.stop)
        self.num_prefill = self.num_prefill or len(self.prompt_ids)
        if self.image_features is not None and not self.image_keys:  # never a prefix key blind to the images
            self.image_keys = ((0, features_digest(self.image_features)),)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_kv_tokens(self) -> int:
        """KV positions this sequence can ever need: the last sampled token is never fed back."""
        return len(self.prompt_ids) + self.max_tokens - 1

    @property
    def is_prefilling(self) -> bool:
        return self.num_cached_tokens < self.num_prefill

    @property
    def samples_next(self) -> bool:
        """A decode step now samples (False while a recomputed sequence replays its output)."""
        return self.num_cached_tokens + 1 == self.num_tokens

    def token_ids(self, start: int, end: int) -> list[int]:
        """Token ids at positions [start, end) of prompt + output."""
        prompt = self.prompt_ids[start:end]
        return prompt + self.output_ids[max(0, start - len(self.prompt_ids)):max(0, end - len(self.prompt_ids))]

    def block_hash(self, index: int, block_size: int) -> bytes:
        """The prefix-cache key of block `index` (its positions must all hold tokens)."""
        while len(self.block_hashes) <= index:
            start = len(self.block_hashes) * block_size
            parent = (self.block_hashes[-1] if self.block_hashes  # 16 bytes either way: no ambiguity
                      else hashlib.blake2b(f"scope|{self.cache_scope}".encode(), digest_size=16).digest())
            digest = hashlib.blake2b(parent, digest_size=16)
            digest.update(array("q", self.token_ids(start, start + block_size)).tobytes())
            for position, image in self.image_keys:
                if start <= position < start + block_size:
                    digest.update(image)
            self.block_hashes.append(digest.digest())
        return self.block_hashes[index]

    def token_at(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def take_logprobs(self) -> list[TokenLogprobs]:
        """The logprobs of the tokens sampled since the last delta (empty unless asked for)."""
        return self.logprob_buffer.take() if self.logprob_buffer is not None else []

    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), len(self.output_ids), self.num_image_tokens, self.num_cached_prompt_tokens)

    def timings(self, now_ns: int) -> StageTimings:
        first = self.first_token_ns or now_ns
        scheduled = self.scheduled_ns or now_ns
        return StageTimings(queue_ns=scheduled - self.arrived_ns, transfer_ns=self.transfer_ns,
                            prefill_ns=first - scheduled, decode_ns=now_ns - first)


def features_digest(features: torch.Tensor) -> bytes:
    """An image's key in `Sequence.image_keys`: blake2b of its features' dtype, shape and bytes
    (the KV of an image position depends on exactly these). Releases the GIL while hashing."""
    data = features.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
    digest = hashlib.blake2b(f"{features.dtype}{tuple(features.shape)}".encode(), digest_size=16)
    digest.update(data)
    return digest.digest()
