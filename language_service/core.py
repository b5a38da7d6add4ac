"""The language service's logic, free of protobuf: fetch embeddings, build the prompt,
run the engine, stream deltas."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer, GenerationConfig

from dvd.config import LanguageConfig
from dvd.deadline import Deadline
from dvd.devices import describe, resolve_attention, resolve_device, resolve_dtype
from dvd.errors import InvalidRequest, ModelNotFound, Unavailable
from dvd.identity import model_identity
from dvd.store import MemoryStore
from dvd.types import Delta, EmbeddingRef, Message, SamplingParams
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.build import build_engine
from language_service.engine.grammars import GrammarCompiler, grammars_available
from language_service.engine.guided import GuideState
from language_service.engine.logprobs import LogprobBuffer, TokenVocab
from language_service.engine.metrics import EngineMetrics
from language_service.engine.sequence import Sequence, features_digest
from language_service.fetch import EmbeddingFetcher
from language_service.model import build_language_model
from language_service.prompt import PromptBuilder

log = logging.getLogger(__name__)


class LanguageCore:
    """Owns the tokenizer, the engine and the embedding fetcher of one language replica."""

    def __init__(self, cfg: LanguageConfig, checkpoint_dir: Path,
                 local_stores: dict[str, MemoryStore] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.checkpoint_dir = checkpoint_dir
        self.model_id = model_identity(checkpoint_dir)
        self.fetcher = EmbeddingFetcher(cfg.fetch_timeout_s, local_stores, tls=cfg.fetch_tls, redis_url=cfg.redis_url,
                                        redis_tls=cfg.redis_tls, redis_password=cfg.redis_password)
        self.metrics = EngineMetrics(registry or CollectorRegistry())
        self.engine = None  # an Engine once loaded

    def load(self) -> None:
        """Blocking: read the LLM tensors and tokenizer, warm up, start the engine thread."""
        device = resolve_device(self.cfg.device)
        dtype = resolve_dtype(self.cfg.device, device)
        self.attn_implementation = resolve_attention(self.cfg.device, device)
        model = build_language_model(str(self.checkpoint_dir), dtype=dtype, device=device,
                                     attn_implementation=self.attn_implementation)
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_dir)
        self.prompts = PromptBuilder(self.tokenizer, self.checkpoint_dir, self.cfg.chat_template)
        self.hidden_size = int(model.config.hidden_size)
        self.max_model_len = min(self.cfg.max_model_len, int(model.config.max_position_embeddings))
        self.device_desc = describe(device, dtype)
        eos_ids = self._eos_ids()
        vocab_size = int(model.get_output_embeddings().weight.shape[0])  # the logits' width, padding included
        if grammars_available():
            self.grammars = GrammarCompiler(self.tokenizer, vocab_size, eos_ids)
            self.vocab = TokenVocab(self.grammars.token_bytes)
        else:
            log.warning("xgrammar is not installed: guided decoding (response_format, guided_*) is refused")
            self.grammars = None
            self.vocab = TokenVocab([self.tokenizer.decode([i]).encode() for i in range(vocab_size)])
        engine = build_engine(self.cfg, model, self.prompts.context_id, self.attn_implementation, eos_ids,
                              self.max_model_len)
        runner = engine.runner
        engine.submit(self._warmup_sequence())  # prefill + decode once before the first request
        while engine.has_work():
            engine.step()
        engine.metrics = self.metrics  # the warm-up is not traffic: count from here
        self.engine = engine
        self.engine.start()
        blocks = engine.scheduler.blocks
        log.info("language model %s loaded on %s (%s attention, %s), %d torch threads; KV cache %d blocks x %d "
                 "tokens (%.0f MiB), prefix caching %s; prompt template %s", self.model_id, self.device_desc,
                 runner.backend, "batch-invariant" if runner.batch_invariant else "fast path", torch.get_num_threads(),
                 blocks.num_blocks, blocks.block_size, runner.kv.num_bytes / 2**20,
                 "on" if blocks.prefix_caching else "off", self.prompts.template.name)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    async def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                       sampling: SamplingParams, model_id: str = "",
                       deadline: Deadline | None = None, cache_scope: str = "") -> AsyncIterator[Delta]:
        """Stream deltas; the last one carries finish_reason, usage and timings. The embedding
        fetches end by `deadline` (the caller's); EmbeddingLost comes before any delta.
        `cache_scope` (the tenant's) bounds which cached prefixes the request may reuse."""
        self._check(refs, model_id)
        if not messages:
            raise InvalidRequest("messages must not be empty")
        prompt = self.prompts.build(messages, [r.num_tokens for r in refs])
        room = self.max_model_len - len(prompt.token_ids)
        if room < 1:
            raise InvalidRequest(f"prompt is {len(prompt.token_ids)} tokens; this model takes at most "
                                 f"{self.max_model_len - 1} (fewer images or tiles, or a shorter history)")
        guide = await self._guide(sampling)  # before admission: a bad schema is a 400, not an engine error
        features, transfer_ns = await self.fetcher.fetch_all(refs, request_id, deadline)
        ordered = [features[i] for i in prompt.image_order]  # each [n_i, hidden]
        image_features = torch.cat(ordered) if ordered else None
        # hashlib releases the GIL: digesting a large image's features costs the loop nothing
        digests = await asyncio.to_thread(lambda: [features_digest(f) for f in ordered]) if ordered else []
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        seq = Sequence(
            request_id=request_id, prompt_ids=prompt.token_ids,
            image_features=image_features, sampling=sampling,
            max_tokens=min(sampling.max_tokens or self.cfg.default_max_tokens, room),
            detokenizer=IncrementalDetokenizer(self.tokenizer), emit=_emitter(loop, queue),
            num_image_tokens=prompt.num_image_tokens, transfer_ns=transfer_ns,
            generator=torch.Generator().manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63)),
            guide=guide,
            logprob_buffer=LogprobBuffer(self.vocab, sampling.top_logprobs) if sampling.logprobs else None,
            cache_scope=cache_scope, image_keys=tuple(zip(_run_starts(prompt.token_ids, self.prompts.context_id), digests)),
        )
        self.engine.submit(seq)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:  # the client went away: free the slot at the next step
                self.engine.abort(request_id)

    async def _guide(self, sampling: SamplingParams) -> GuideState | None:
        """The request's grammar matcher; compiling (or the cache) runs off the event loop and
        off the engine thread."""
        if sampling.guided is None:
            return None
        if self.grammars is None:
            raise InvalidRequest("guided decoding needs the xgrammar package, which this language replica lacks")
        return await asyncio.to_thread(self.grammars.guide, sampling.guided)

    def abort(self, request_id: str) -> bool:
        return self.engine is not None and self.engine.abort(request_id)

    def info(self) -> dict:
        return dict(model_id=self.model_id, hidden_size=self.hidden_size, max_model_len=self.max_model_len,
                    attn_implementation=self.attn_implementation, device=self.device_desc,
                    weight_bytes=self.weight_bytes())

    def weight_bytes(self) -> int:
        tensors = {t.data_ptr(): t for t in self.model.state_dict().values()}  # tied weights count once
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def tensor_names(self) -> list[str]:
        """Every parameter and buffer this process holds (tests assert no vision tensor is here)."""
        return list(self.model.state_dict().keys())

    def _check(self, refs: list[EmbeddingRef], model_id: str) -> None:
        if self.engine is None:
            raise Unavailable("language replica is still loading")
        if model_id and model_id not in (self.model_id, self.model_id.split("@")[0]):
            raise ModelNotFound(f"this language replica serves {self.model_id!r}, not {model_id!r}")
        for ref in refs:
            if ref.model_id != self.model_id:
                raise InvalidRequest(f"embedding {ref.key!r} was made by {ref.model_id!r}, not {self.model_id!r}")
            if ref.shape[1] != self.hidden_size:
                raise InvalidRequest(f"embedding hidden size {ref.shape[1]} != model hidden size {self.hidden_size}")

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} - {None}
        try:
            eos = GenerationConfig.from_pretrained(self.checkpoint_dir).eos_token_id
        except OSError:
            eos = None
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids

    def _warmup_sequence(self) -> Sequence:
        return Sequence(request_id="warmup", prompt_ids=self.tokenizer.encode("warm up"), image_features=None,
                        sampling=SamplingParams(ignore_eos=True), max_tokens=2,
                        detokenizer=IncrementalDetokenizer(self.tokenizer), emit=lambda item: None)


def _run_starts(token_ids: list[int], token_id: int) -> list[int]:
    """Where each run of `token_id` starts: an image's first placeholder, in prompt order."""
    return [i for i, t in enumerate(token_ids) if t == token_id and (i == 0 or token_ids[i - 1] != token_id)]


def _emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
    """Hands engine-thread items to the request's coroutine; drops them once its loop is gone."""

    def emit(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop closed (shutdown): nobody is listening any more
            pass

    return emit
