"""A request inside the engine: prompt, image features, sampling state, where its KV lives,
how far its prompt is prefilled, and the output so far.

The scheduler reads and advances the bookkeeping fields; the runner reads them to index the
KV arena; nothing else is passed between the two."""

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
    WAITING = "waiting"  # queued, owns no KV
    RUNNING = "running"  # owns a KV extent: prefilling, then decoding
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
    kv_start: int = -1  # first arena position of this sequence's extent (-1: none yet)
    num_cached_tokens: int = 0  # positions whose K/V are already in the extent
    arrived_ns: int = field(default_factory=time.perf_counter_ns)
    scheduled_ns: int = 0
    first_token_ns: int = 0
    abort_requested: bool = False
    guide: GuideState | None = None  # the grammar's matcher, for guided decoding
    logprob_buffer: LogprobBuffer | None = None  # when the request asked for logprobs

    def __post_init__(self) -> None:
        self.stops = StopStrings(self.sampling.stop)

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
        return self.num_cached_tokens < len(self.prompt_ids)

    @property
    def last_token_id(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

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
