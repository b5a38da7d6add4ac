"""Engine fixtures: the real tiny/small language models behind engines built like LanguageCore
builds them, driven step by step from the test thread (no engine thread, so arrivals can be
placed at exact step boundaries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer

from dvd.config import LanguageConfig
from dvd.types import Delta, FinishReason, SamplingParams
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.build import build_engine
from language_service.engine.engine import Engine
from language_service.engine.grammars import GrammarCompiler
from language_service.engine.logprobs import LogprobBuffer, TokenVocab
from language_service.engine.metrics import EngineMetrics
from language_service.engine.sequence import Sequence
from language_service.model import build_language_model

IMAGE_TOKEN = "<IMG_CONTEXT>"


@dataclass
class Request:
    """A sequence plus everything the engine emitted for it."""

    seq: Sequence
    deltas: list = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        return [t for d in self.deltas if isinstance(d, Delta) for t in d.token_ids]

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas if isinstance(d, Delta))

    @property
    def logprobs(self) -> list:
        return [lp for d in self.deltas if isinstance(d, Delta) for lp in d.logprobs]

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.deltas[-1].finish_reason if self.deltas else None


class EngineKit:
    """One model + tokenizer; builds engines with given limits and requests for them."""

    def __init__(self, checkpoint: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = build_language_model(checkpoint, dtype=torch.float32, device="cpu", attn_implementation="sdpa")
        self.hidden_size = int(self.model.config.hidden_size)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self._grammars: GrammarCompiler | None = None

    @property
    def grammars(self) -> GrammarCompiler:
        """Built as LanguageCore builds it (logits width, the tokenizer's EOS), on first use."""
        if self._grammars is None:
            vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
            self._grammars = GrammarCompiler(self.tokenizer, vocab_size, {self.tokenizer.eos_token_id})
        return self._grammars

    def engine(self, max_running_seqs: int = 16, max_waiting_seqs: int = 64, max_kv_tokens: int = 8192,
               max_prefill_tokens: int = 2048, max_model_len: int = 4096, eos: set[int] | None = None,
               registry: CollectorRegistry | None = None, batch_invariant: bool = False,
               kv_block_size: int = 16, cuda_graphs: bool = True, attn_implementation: str = "sdpa",
               fused_layers: bool = True, prefix_caching: bool = True, decode_attention: str = "auto") -> Engine:
        """An engine built as LanguageCore builds one (`build_engine`), on this kit's model."""
        cfg = LanguageConfig(model="test", max_running_seqs=max_running_seqs, max_queue=max_waiting_seqs,
                             max_kv_tokens=max_kv_tokens, max_prefill_tokens=max_prefill_tokens,
                             max_model_len=max_model_len, batch_invariant=batch_invariant,
                             kv_block_size=kv_block_size, cuda_graphs=cuda_graphs, fused_layers=fused_layers,
                             prefix_caching=prefix_caching, decode_attention=decode_attention)
        eos = {self.tokenizer.eos_token_id} if eos is None else eos
        return build_engine(cfg, self.model, self.image_token_id, attn_implementation, eos, max_model_len,
                            EngineMetrics(registry or CollectorRegistry()))

    def request(self, request_id: str, text: str, max_tokens: int, sampling: SamplingParams | None = None,
                num_image_tokens: int = 0, image_seed: int = 0) -> Request:
        """A text prompt, optionally with `num_image_tokens` placeholders filled by seeded random features."""
        ids = self.tokenizer.encode(text)
        features = None
        if num_image_tokens:
            ids = ids[:2] + [self.image_token_id] * num_image_tokens + ids[2:]
            generator = torch.Generator().manual_seed(image_seed)
            features = torch.randn(num_image_tokens, self.hidden_size, generator=generator)  # [n, H]
        sampling = sampling or SamplingParams(ignore_eos=True)
        request = Request(seq=None)
        request.seq = Sequence(
            request_id=request_id, prompt_ids=ids, image_features=features, sampling=sampling,
            max_tokens=max_tokens, detokenizer=IncrementalDetokenizer(self.tokenizer), emit=request.deltas.append,
            num_image_tokens=num_image_tokens,
            generator=torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None,
            guide=self.grammars.guide(sampling.guided) if sampling.guided else None,
            logprob_buffer=LogprobBuffer(TokenVocab(self.grammars.token_bytes), sampling.top_logprobs)
            if sampling.logprobs else None)
        return request


def drive(engine: Engine, arrivals: dict[int, list[Request]], max_steps: int = 10_000) -> int:
    """Submit arrivals[k] just before step k; step until idle. Returns the number of steps."""
    step = 0
    while step < max_steps and (engine.has_work() or any(k >= step for k in arrivals)):
        for request in arrivals.get(step, []):
            engine.submit(request.seq)
        engine.step()
        step += 1
    return step


def run_alone(kit: EngineKit, request: Request, **limits) -> Request:
    drive(kit.engine(**limits), {0: [request]})
    return request


@pytest.fixture(scope="session")
def tiny_kit(tiny_ckpt) -> EngineKit:
    return EngineKit(tiny_ckpt)


@pytest.fixture(scope="session")
def small_kit(small_ckpt) -> EngineKit:
    return EngineKit(small_ckpt)


@pytest.fixture(params=["tiny", "small"])
def kit(request) -> EngineKit:
    return request.getfixturevalue(f"{request.param}_kit")
