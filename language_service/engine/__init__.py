"""The continuous-batching engine: `Engine.step()` = schedule -> run -> postprocess.

- `scheduler.py` (+ `kv_extents.py`): policy, no tensors. Admission under a running cap and a
  KV-token budget behind a bounded queue; which prompt chunks and which decodes run this step.
- `runner.py` (+ `kv_cache.py`, `attention.py`): execution, no policy. Prompt chunks and one
  batched decode on the transformers model, over a KV arena allocated once.
- `sampler.py`, `stops.py`: per-request sampling and stop strings; `metrics.py`: Prometheus.
- `grammars.py` (compiling, off the engine thread, cached), `guided.py` (per-row grammar masks
  in the sampler, matchers advanced in postprocess), `logprobs.py`: structured outputs and logprobs.

`Sequence` objects (grouped in a `Batch`) are the only thing passed between scheduler and runner."""
