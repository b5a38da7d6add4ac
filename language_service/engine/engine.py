"""The engine loop: `step()` = schedule -> run -> postprocess, on one dedicated thread.

Requests arrive from the asyncio side through `submit`/`abort` (thread-safe); deltas leave
through each sequence's `emit` callback."""

from __future__ import annotations

import logging
import threading
import time

from dvd.errors import DvdError, Internal
from dvd.types import Delta, FinishReason
from language_service.engine.runner import ModelRunner
from language_service.engine.sampler import sample
from language_service.engine.scheduler import Scheduler
from language_service.engine.sequence import Sequence

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, eos_token_ids: set[int], max_model_len: int) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
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
        self._thread.join(timeout=30)

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence (raises ResourceExhausted when the queue is full)."""
        with self._wakeup:
            self.scheduler.add(seq)
            self._wakeup.notify()

    def abort(self, request_id: str) -> bool:
        """Mark a request for abort; it leaves at the next step boundary."""
        with self._wakeup:
            seq = self.scheduler.find(request_id)
            if seq is not None:
                seq.abort_requested = True
                self._wakeup.notify()
            return seq is not None

    def step(self) -> None:
        with self._lock:
            self._reap_aborted()
            batch = self.scheduler.schedule()
        for seq in batch.prefill:
            seq.scheduled_ns = time.perf_counter_ns()
            self._postprocess([seq], sample(self.runner.prefill(seq), [seq]))
        if batch.decode:
            self._postprocess(batch.decode, sample(self.runner.decode(batch.decode), batch.decode))

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

    def _postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> None:
        now = time.perf_counter_ns()
        for seq, token_id in zip(seqs, token_ids):
            seq.first_token_ns = seq.first_token_ns or now
            seq.output_ids.append(token_id)
            reason = self._finish_reason(seq, token_id)
            text, stopped = "", False
            if not (reason is not None and token_id in self._stop_ids(seq)):
                text, stopped = seq.stops.feed(seq.detokenizer.add(token_id))
            if stopped:
                reason = FinishReason.STOP
            if reason is None:
                if text:
                    seq.emit(Delta(token_ids=[token_id], text=text))
                else:
                    seq.emit(Delta(token_ids=[token_id]))
                continue
            with self._lock:
                self._finish(seq, reason, [token_id], text, flush=not stopped)

    def _stop_ids(self, seq: Sequence) -> set[int]:
        ids = set(seq.sampling.stop_token_ids)
        return ids if seq.sampling.ignore_eos else ids | self.eos_token_ids

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        if token_id in self._stop_ids(seq):
            return FinishReason.STOP
        if len(seq.output_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, token_ids: list[int] | None = None,
                text: str = "", flush: bool = True) -> None:
        """Caller holds the lock. Emits the final delta and frees the sequence's cache."""
        if flush:
            text += seq.stops.feed(seq.detokenizer.flush())[0] + seq.stops.flush()
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self.runner.release(seq)
        seq.emit(Delta(token_ids=token_ids or [], text=text, finish_reason=reason, usage=seq.usage(),
                       timings=seq.timings(time.perf_counter_ns())))

    def _reap_aborted(self) -> None:
        for seq in [s for s in (*self.scheduler.running, *self.scheduler.waiting) if s.abort_requested]:
            self._finish(seq, FinishReason.ABORT, flush=False)

    def _fail_running(self, exc: DvdError) -> None:
        with self._lock:
            for seq in list(self.scheduler.running):
                self.scheduler.finish(seq)
                self.runner.release(seq)
                seq.emit(exc)
