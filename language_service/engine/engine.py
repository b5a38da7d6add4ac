"""The engine loop: `step()` = schedule -> run -> postprocess, on one dedicated thread.

Requests arrive from the asyncio side through `submit`/`abort` (thread-safe) and join the
running batch at the next step boundary; finished and aborted ones leave at a step boundary,
freeing their KV blocks for the queue. Deltas leave through each sequence's `emit` callback."""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry

from dvd.errors import DvdError, Internal, ResourceExhausted
from dvd.types import Delta, FinishReason
from language_service.engine import guided
from language_service.engine.metrics import EngineMetrics
from language_service.engine.runner import ModelRunner
from language_service.engine.scheduler import Batch, Scheduler
from language_service.engine.sequence import Sequence

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, eos_token_ids: set[int], max_model_len: int,
                 metrics: EngineMetrics | None = None) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.metrics = metrics or EngineMetrics(CollectorRegistry())
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Abort everything still queued or running, then end the loop."""
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence (raises ResourceExhausted when the queue is full)."""
        with self._wakeup:
            try:
                self.scheduler.add(seq)
            except ResourceExhausted:
                self.metrics.rejected.inc()
                raise
            self._publish_load()
            self._wakeup.notify()

    def abort(self, request_id: str) -> bool:
        """Mark a request for abort; it leaves, and frees its KV, at the next step boundary."""
        with self._wakeup:
            seq = self.scheduler.find(request_id)
            if seq is not None:
                seq.abort_requested = True
                self._wakeup.notify()
            return seq is not None

    def has_work(self) -> bool:
        with self._lock:
            return self.scheduler.has_work()

    def step(self) -> None:
        """One engine iteration: schedule a batch (policy), run it (one forward), postprocess
        the sampled tokens (stream deltas, finish or free sequences)."""
        started = time.perf_counter()
        batch = self._schedule()
        sampled = self.runner.run(batch)
        self._postprocess(batch, sampled)
        with self._lock:
            self._publish_load()
        self.metrics.record_step(time.perf_counter() - started, batch.num_prefill_tokens, len(batch.decode),
                                 batch.num_preempted, batch.num_cached_prompt_tokens)

    def _schedule(self) -> Batch:
        with self._lock:
            for seq in [s for s in (*self.scheduler.running, *self.scheduler.waiting) if s.abort_requested]:
                self._finish(seq, FinishReason.ABORT, flush=False)
            batch = self.scheduler.schedule()
            self._publish_load()
        now = time.perf_counter_ns()
        for chunk in batch.prefill:
            chunk.seq.scheduled_ns = chunk.seq.scheduled_ns or now
        return batch

    def _postprocess(self, batch: Batch, sampled: list[tuple[Sequence, int]]) -> None:
        for chunk in batch.prefill:
            chunk.seq.num_cached_tokens = chunk.end
        for seq in batch.decode:
            seq.num_cached_tokens += 1  # the token it was fed is in its blocks now
        for seq in [*(c.seq for c in batch.prefill), *batch.decode]:
            self.scheduler.blocks.commit(seq)  # blocks filled by this step join the prefix cache
        now = time.perf_counter_ns()
        for seq, token_id in sampled:
            if not seq.abort_requested:  # an abort that raced this step is reaped at the next one
                seq.first_token_ns = seq.first_token_ns or now
                self._append(seq, token_id)

    def _append(self, seq: Sequence, token_id: int) -> None:
        seq.output_ids.append(token_id)
        is_stop_token = token_id in self._stop_ids(seq)
        reason = self._finish_reason(seq, is_stop_token)
        if guided.advance(seq, token_id) and reason is None:  # the grammar is complete
            reason = FinishReason.STOP
        text, stopped = "", False
        if not (reason is not None and is_stop_token):
            text, stopped = seq.stops.feed(seq.detokenizer.add(token_id))
        if stopped:
            reason = FinishReason.STOP
        if reason is None:
            seq.emit(Delta(token_ids=[token_id], text=text, logprobs=seq.take_logprobs()))
            return
        with self._lock:
            self._finish(seq, reason, [token_id], text, flush=not stopped)

    def _stop_ids(self, seq: Sequence) -> set[int]:
        ids = set(seq.sampling.stop_token_ids)
        return ids if seq.sampling.ignore_eos else ids | self.eos_token_ids

    def _finish_reason(self, seq: Sequence, is_stop_token: bool) -> FinishReason | None:
        if is_stop_token:
            return FinishReason.STOP
        if len(seq.output_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, token_ids: list[int] | None = None,
                text: str = "", flush: bool = True) -> None:
        """Caller holds the lock. Frees the sequence's KV blocks and emits the final delta."""
        if flush:
            text += seq.stops.feed(seq.detokenizer.flush())[0] + seq.stops.flush()
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self.metrics.record_finish(reason)
        seq.emit(Delta(token_ids=token_ids or [], text=text, finish_reason=reason, usage=seq.usage(),
                       timings=seq.timings(time.perf_counter_ns()),
                       logprobs=seq.take_logprobs() if token_ids else []))

    def _publish_load(self) -> None:
        s = self.scheduler
        self.metrics.set_load(len(s.running), len(s.waiting), s.blocks.usage, s.blocks.num_cached)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopped and not self.scheduler.has_work():
                    self._wakeup.wait()
                if self._stopped:
                    break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - fail the affected requests, keep serving
                log.exception("engine step failed")
                self._fail_running(exc if isinstance(exc, DvdError) else Internal(f"engine error: {exc}"))
        with self._lock:
            for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                self._finish(seq, FinishReason.ABORT)
            self._publish_load()

    def _fail_running(self, exc: DvdError) -> None:
        with self._lock:
            for seq in list(self.scheduler.running):
                self.scheduler.finish(seq)
                seq.emit(exc)
            self._publish_load()
