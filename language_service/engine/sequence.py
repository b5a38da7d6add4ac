"""A request inside the engine: prompt, image features, sampling state, output so far."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dvd.types import Delta, FinishReason, SamplingParams, StageTimings, Usage
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.stops import StopStrings


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    image_features: torch.Tensor | None  # [num_image_tokens, hidden], in placeholder order
    sampling: SamplingParams
    max_tokens: int
    detokenizer: IncrementalDetokenizer
    emit: Callable[[Delta], None]  # called from the engine thread
    num_image_tokens: int = 0
    transfer_ns: int = 0
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    kv_cache: object = None  # owned by the runner
    arrived_ns: int = field(default_factory=time.perf_counter_ns)
    scheduled_ns: int = 0
    first_token_ns: int = 0
    abort_requested: bool = False

    def __post_init__(self) -> None:
        self.stops = StopStrings(self.sampling.stop)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token_id(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), len(self.output_ids), self.num_image_tokens)

    def timings(self, now_ns: int) -> StageTimings:
        first = self.first_token_ns or now_ns
        scheduled = self.scheduled_ns or now_ns
        return StageTimings(queue_ns=scheduled - self.arrived_ns, transfer_ns=self.transfer_ns,
                            prefill_ns=first - scheduled, decode_ns=now_ns - first)
