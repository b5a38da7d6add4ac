"""Grammar compilation for guided decoding (xgrammar), off the engine thread, cached by hash.

Why xgrammar: `dvd bench guided-mask` measured its per-token mask fill + accept at about a third
of llguidance's on this CPU at batch 16 (BENCHMARKS.md, "Structured outputs").

- The tokenizer is described to xgrammar once per replica, with the model's vocabulary width
  (the logits' V, padding rows included) and the engine's EOS ids as the stop tokens, so a
  stop token is allowed only where the grammar accepts.
- Special tokens other than the stop tokens (`<img>`, `<IMG_CONTEXT>`, `<|im_start|>`, ...) are
  described as empty, which xgrammar never allows: left as their literal text they could stand
  inside a JSON string, and the detokenizer, which skips special tokens, would drop them.
- JSON is compact (`any_whitespace=False`): whitespace freedom only lets a weak model loop on
  blanks until max_tokens. Compact JSON never holds a raw control byte (0x00-0x1f), so JSON
  guides also forbid every token containing one: xgrammar 0.2.9 lets them into strings that
  carry minLength/maxLength, which is invalid JSON (its plain strings, and llguidance, refuse them).
- `compile` is blocking and thread-safe; `LanguageCore` runs it in a worker thread before the
  request is admitted, so a schema that cannot compile is an InvalidRequest (400) and the engine
  thread never compiles. Compiled grammars are kept in an LRU keyed by
  `GuidedDecoding.cache_key()` (a hash of the kind and the schema/regex/choices)."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

import numpy as np

try:
    import xgrammar as xgr
except ImportError:  # a bare GPU box (scripts/gpu_check.sh): the engine runs, guided requests are refused
    xgr = None

from dvd.errors import InvalidRequest
from dvd.types import GuidedDecoding, GuideKind
from language_service.engine.guided import GuideState

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[16:58:59] /project/cpp/x.cc:5088: " on xgrammar errors


def grammars_available() -> bool:
    """Whether xgrammar imports here (a project dependency; absent only on bare check machines)."""
    return xgr is not None


class GrammarCompiler:
    """Compiles `GuidedDecoding` specs into xgrammar grammars for one tokenizer."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: set[int], cache_size: int = 256) -> None:
        described = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                        stop_token_ids=sorted(stop_token_ids))
        self.token_bytes: list[bytes] = list(described.decoded_vocab)  # literal bytes of every id
        self.vocab_size = vocab_size
        self.info = _without_special_tokens(tokenizer, described, vocab_size, stop_token_ids)
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.json_allowed_words = _words([not any(b < 0x20 for b in raw) for raw in self.token_bytes])  # [W]
        self._cache: OrderedDict[str, object] = OrderedDict()  # least recently used first
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, guided: GuidedDecoding) -> xgr.CompiledGrammar:
        """Blocking. The cached grammar, or a fresh one; InvalidRequest naming the problem when
        the library cannot compile the schema or regex."""
        key = guided.cache_key()
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
        if grammar is None:
            grammar = self._compile(guided)
            with self._lock:
                self._cache[key] = grammar
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return grammar

    def guide(self, guided: GuidedDecoding) -> GuideState:
        """Blocking: a fresh matcher over the (cached) grammar, for one sequence."""
        is_json = guided.kind in (GuideKind.JSON_SCHEMA, GuideKind.JSON_OBJECT)
        return GuideState(self.compile(guided), self.json_allowed_words if is_json else None)

    @property
    def num_cached(self) -> int:
        with self._lock:
            return len(self._cache)

    def _compile(self, guided: GuidedDecoding) -> xgr.CompiledGrammar:
        try:
            if guided.kind is GuideKind.JSON_SCHEMA:
                return self._compiler.compile_json_schema(guided.schema, any_whitespace=False,
                                                          strict_mode=guided.strict)
            if guided.kind is GuideKind.JSON_OBJECT:
                return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if guided.kind is GuideKind.REGEX:
                return self._compiler.compile_regex(guided.regex)
            return self._compiler.compile_grammar(choice_grammar(guided.choices))
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError/its own types
            what = {GuideKind.JSON_SCHEMA: "json_schema", GuideKind.JSON_OBJECT: "json_object",
                    GuideKind.REGEX: "guided_regex", GuideKind.CHOICE: "guided_choice"}[guided.kind]
            param = "response_format" if what.startswith("json") else what
            raise InvalidRequest(f"cannot compile the {what}: {_clean(exc)}", param=param) from exc


def choice_grammar(choices: tuple[str, ...]) -> str:
    """EBNF whose only sentences are the given strings (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _words(allowed: list[bool]) -> np.ndarray:
    """Per-token flags -> the bitmask layout ([ceil(V / 32)] int32, bit j of word w is token 32w + j)."""
    packed = np.packbits(np.array(allowed + [False] * (-len(allowed) % 32)), bitorder="little")  # uint8
    return packed.view("<u4").view(np.int32).copy()


def _without_special_tokens(tokenizer, described: xgr.TokenizerInfo, vocab_size: int,
                            stop_token_ids: set[int]) -> xgr.TokenizerInfo:
    """The same tokenizer description with every special token but the stop tokens emptied."""
    vocab = [""] * vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < vocab_size:
            vocab[token_id] = token
    for token_id, added in tokenizer.added_tokens_decoder.items():
        if added.special and token_id < vocab_size and token_id not in stop_token_ids:
            vocab[token_id] = ""
    return xgr.TokenizerInfo(vocab, described.vocab_type, vocab_size=vocab_size,
                             stop_token_ids=sorted(stop_token_ids), add_prefix_space=described.add_prefix_space)


def _clean(exc: Exception) -> str:
    lines = [_LOG_PREFIX.sub("", line).strip() for line in str(exc).splitlines()]
    return "; ".join(line for line in lines if line)[:500] or type(exc).__name__
