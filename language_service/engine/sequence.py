"""A request inside the engine: prompt, image features, sampling state, which KV blocks it
holds, how far its tokens are cached, and the output so far.

The scheduler reads and advances the bookkeeping fields; the runner reads them to index the
paged KV cache; nothing else is passed between the two.

Positions [0, num_prefill) are written by prefill chunks, later ones by decode steps, which feed
the token at `num_cached_tokens` and sample only once the cache holds every token but the last.
After a preemption (its blocks taken back) a sequence starts over from position 0 with its output
kept: the prompt and the tokens already streamed are recomputed, nothing is sampled or emitted
twice."""

from __future__ import annotations

import enum
import time
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

    def __post_init__(self) -> None:
        self.stops = StopStrings(self.sampling.stop)
        self.num_prefill = self.num_prefill or len(self.prompt_ids)

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

    def token_at(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def take_logprobs(self) -> list[TokenLogprobs]:
        """The logprobs of the tokens sampled since the last delta (empty unless asked for)."""
        return self.logprob_buffer.take() if self.logprob_buffer is not None else []

    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), len(self.output_ids), self.num_image_tokens)

    def timings(self, now_ns: int) -> StageTimings:
        first = self.first_token_ns or now_ns
        scheduled = self.scheduled_ns or now_ns
        return StageTimings(queue_ns=scheduled - self.arrived_ns, transfer_ns=self.transfer_ns,
                            prefill_ns=first - scheduled, decode_ns=now_ns - first)
