"""The decode engine: `Engine.step()` = schedule -> run -> postprocess.

The scheduler decides which sequences run (policy, no tensors); the runner executes the
model on them (tensors, no policy); `Sequence` is the only thing passed between them."""
