"""The baselines `dvd bench engine` measures the engine against, on the same weights and threads:

- `generate_batch`: transformers' `model.generate` on a static, left-padded batch of the prompts
  (greedy, exactly `max_tokens` new tokens each): the simplest thing a user can write.
- `StaticBatchServer`: a server built on it. Whenever it is idle it takes every request that has
  arrived (up to `max_batch`) and generates that batch to completion (to its longest request's
  length, as a batch does when its requests stop at different EOS); requests arriving meanwhile
  wait for the next batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def generate_batch(model, prompts: list[list[int]], max_tokens: int, pad_id: int) -> int:
    """Generates for every prompt at once; returns the number of new tokens."""
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)  # [B, L], left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=pad_id)
    return int(out[:, width:].numel())  # .numel() after generate: the tokens are on the host by now


@dataclass
class StaticBatchServer:
    """Serves `arrivals` (seconds after start, one prompt each) in static batches; returns timings."""

    model: object
    pad_id: int
    max_batch: int = 64
    batch_sizes: list[int] = field(default_factory=list)  # of every batch served, in order

    def serve(self, prompts: list[list[int]], arrivals: list[float], lengths: list[int]) -> tuple[float, list[float]]:
        """`lengths`: new tokens per request. Returns (makespan s, per-request latency s)."""
        start = time.perf_counter()
        latencies = [0.0] * len(prompts)
        next_request = 0
        while next_request < len(prompts):
            now = time.perf_counter() - start
            if arrivals[next_request] > now:
                time.sleep(arrivals[next_request] - now)
                continue
            now = time.perf_counter() - start
            batch = [i for i in range(next_request, len(prompts)) if arrivals[i] <= now][: self.max_batch]
            generate_batch(self.model, [prompts[i] for i in batch], max(lengths[i] for i in batch), self.pad_id)
            self.batch_sizes.append(len(batch))
            done = time.perf_counter() - start
            for i in batch:
                latencies[i] = done - arrivals[i]
            next_request = batch[-1] + 1
        return time.perf_counter() - start, latencies


def poisson_arrivals(num_requests: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival times (s) of a Poisson process at `rate` requests/s."""
    generator = torch.Generator().manual_seed(seed)
    gaps = torch.empty(num_requests).exponential_(rate, generator=generator)
    return torch.cumsum(gaps, 0).sub(gaps[0]).tolist()  # the first request at t = 0


def mixed_lengths(num_requests: int, mean: int, seed: int = 0) -> list[int]:
    """Output lengths uniform in [mean / 8, 2 * mean - mean / 8] (mean `mean`): requests that stop
    at different points, as EOS makes them."""
    low = max(1, mean // 8)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, 2 * mean - low + 1, (num_requests,), generator=generator).tolist()
