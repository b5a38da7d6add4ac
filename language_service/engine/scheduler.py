"""Admission policy: FIFO waiting queue, a cap on running sequences and on queued ones.
Never touches tensors."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dvd.errors import ResourceExhausted
from language_service.engine.sequence import Sequence, Status


@dataclass
class Batch:
    prefill: list[Sequence]  # newly admitted: run their prompts
    decode: list[Sequence]  # already running: one token each


class Scheduler:
    def __init__(self, max_running: int, max_waiting: int) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        if len(self.waiting) >= self.max_waiting:
            raise ResourceExhausted(f"language queue is full ({self.max_waiting} requests waiting)")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        """Admit one waiting sequence (prefill) when there is room; else decode the running ones."""
        if self.waiting and len(self.running) < self.max_running:
            seq = self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            return Batch(prefill=[seq], decode=[])
        return Batch(prefill=[], decode=list(self.running))

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def find(self, request_id: str) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.request_id == request_id), None)
