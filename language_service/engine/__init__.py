"""The continuous-batching engine: `Engine.step()` = schedule -> run -> postprocess.

- `scheduler.py` (+ `block_manager.py`): policy, no tensors. Admission under a running cap and
  the free KV blocks behind a bounded queue; preemption by recompute when blocks run out; which
  prompt chunks and which decodes run this step.
- `runner.py` (+ `plans.py`, `forward.py`, `attention.py`, `kv_cache.py`, `cuda_graphs.py`):
  execution, no policy. Packed prompt chunks and one batched decode on the checkpoint's decoder
  layers, over a paged KV cache allocated once; batch-invariant mode trades speed for bit-exact
  solo == batched outputs.
- `sampler.py`, `stops.py`: batched per-request sampling and stop strings; `metrics.py`: Prometheus.
- `grammars.py` (compiling, off the engine thread, cached), `guided.py` (per-row grammar masks
  applied to the logits before `sample`, matchers advanced in postprocess), `logprobs.py`:
  structured outputs and logprobs.

`Sequence` objects (grouped in a `Batch`) are the only thing passed between scheduler and runner."""
