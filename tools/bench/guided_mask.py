"""`dvd bench guided-mask`: what a grammar's token mask costs per decode step, xgrammar against
llguidance, side by side in one process: the measurement behind the engine's choice of library.

Method: the tokenizer of a make-checkpoint preset (built offline, no weights needed) or of a
checkpoint dir, with the embedding's padded vocabulary. `--batch` matchers (row i follows schema
i mod 4 of `SCHEMAS`: nested objects, arrays, enums, bounded numbers) walk their grammars for
`--steps` decode steps. Every step draws seeded random logits [B, V], then per library:
fill each row's bitmask (the serial per-row call the engine makes), apply the masks to the
logits (one shared implementation, so only the libraries differ), take the argmax and hand the
token back to each matcher; a matcher whose document is complete starts over. Fill and accept
are timed per step; libraries alternate round by round so drift on a shared machine lands on
both alike; medians over rounds are reported, with the grammar compile times (cold, no cache).
Both libraries walk the same token stream only while they agree on the allowed sets, so the
documents they complete are counted, not compared."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SCHEMAS = (
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                     "zip": {"type": "integer", "minimum": 0, "maximum": 99999}},
                    "required": ["city", "zip"], "additionalProperties": False}},
     "required": ["name", "address"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                               "minItems": 1, "maxItems": 4}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                      "ok": {"type": "boolean"}},
     "required": ["colour", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1},
                                      "count": {"type": "integer", "minimum": -5, "maximum": 500}},
     "required": ["score", "count"], "additionalProperties": False},
)


@dataclass(frozen=True)
class MaskBenchOptions:
    tokenizer_source: str  # a preset name or a checkpoint dir
    batch: int = 16
    steps: int = 64
    rounds: int = 5


@dataclass
class LibraryResult:
    compile_ms: float  # all SCHEMAS, cold
    fill_ms: list[float]  # per round: median ms per step to fill B rows
    accept_ms: list[float]  # per round: median ms per step to accept B tokens
    documents: int = 0  # completed documents over the whole run


class _Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size),
                                            max_threads=1, cache_enabled=False)

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)

    def matcher(self, grammar):
        return self.xgr.GrammarMatcher(grammar)

    def fill(self, matcher, bitmask: torch.Tensor, row: int) -> None:
        matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, matcher, token_id: int) -> bool:
        """Accepts; True when the document is complete."""
        if not matcher.accept_token(token_id):
            raise RuntimeError("xgrammar rejected a token its own mask allowed")
        return matcher.is_terminated()


class _Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)

    def compile(self, schema: dict):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        self.llg.LLMatcher(self.tokenizer, grammar)  # compiling happens when a matcher is built
        return grammar

    def matcher(self, grammar):
        return self.llg.LLMatcher(self.tokenizer, grammar)

    def fill(self, matcher, bitmask: torch.Tensor, row: int) -> None:
        self.llg.torch.fill_next_token_bitmask(matcher, bitmask, row)

    def accept(self, matcher, token_id: int) -> bool:
        if not matcher.consume_token(token_id):
            raise RuntimeError(f"llguidance rejected a token its own mask allowed: {matcher.get_error()}")
        return matcher.is_stopped()


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits: [B, V]; bitmask: [B, ceil(V / 32)] int32 in the layout both libraries write."""
    from language_service.engine.guided import unpack_bitmask

    allowed = torch.from_numpy(unpack_bitmask(bitmask, logits.shape[1]))  # [B, V]
    return logits.masked_fill(~allowed, float("-inf"))


def load_tokenizer(source: str):
    """(tokenizer, embedding rows) of a preset (built offline) or a checkpoint dir."""
    if Path(source).is_dir():
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source), int(getattr(config, "text_config", config).vocab_size)
    from tools.checkpoint.presets import embedding_rows, get_preset
    from tools.checkpoint.tokenizer import build_tokenizer

    preset = get_preset(source)
    tokenizer = build_tokenizer(preset.bpe_vocab_size)
    return tokenizer, embedding_rows(preset, len(tokenizer))


def run_mask_bench(opts: MaskBenchOptions) -> tuple[int, dict[str, LibraryResult]]:
    tokenizer, vocab_size = load_tokenizer(opts.tokenizer_source)
    libraries = [_Xgrammar(tokenizer, vocab_size), _Llguidance(tokenizer, vocab_size)]
    results, walkers = {}, {}
    for lib in libraries:
        started = time.perf_counter()
        grammars = [lib.compile(s) for s in SCHEMAS]
        results[lib.name] = LibraryResult((time.perf_counter() - started) * 1000, [], [])
        walkers[lib.name] = _Walk(lib, grammars, opts.batch, vocab_size)
    for round_index in range(opts.rounds + 1):  # round 0 warms up
        for lib in libraries:
            fill, accept = walkers[lib.name].run(opts.steps, seed=round_index)
            if round_index:
                results[lib.name].fill_ms.append(statistics.median(fill))
                results[lib.name].accept_ms.append(statistics.median(accept))
    for lib in libraries:
        results[lib.name].documents = walkers[lib.name].documents
    return vocab_size, results


class _Walk:
    """B matchers of one library walking their grammars under random logits."""

    def __init__(self, lib, grammars: list, batch: int, vocab_size: int) -> None:
        self.lib, self.grammars, self.vocab_size = lib, grammars, vocab_size
        self.matchers = [lib.matcher(grammars[i % len(grammars)]) for i in range(batch)]
        self.bitmask = torch.full((batch, (vocab_size + 31) // 32), -1, dtype=torch.int32)  # [B, W]
        self.documents = 0

    def run(self, steps: int, seed: int) -> tuple[list[float], list[float]]:
        generator = torch.Generator().manual_seed(seed)
        fill_ms, accept_ms = [], []
        for _ in range(steps):
            logits = torch.randn(len(self.matchers), self.vocab_size, generator=generator)  # [B, V]
            started = time.perf_counter()
            for row, matcher in enumerate(self.matchers):
                self.lib.fill(matcher, self.bitmask, row)
            filled = time.perf_counter()
            token_ids = apply_bitmask(logits, self.bitmask).argmax(-1).tolist()
            accepting = time.perf_counter()
            for row, token_id in enumerate(token_ids):
                if self.lib.accept(self.matchers[row], token_id):
                    self.documents += 1
                    self.matchers[row] = self.lib.matcher(self.grammars[row % len(self.grammars)])
            fill_ms.append((filled - started) * 1000)
            accept_ms.append((time.perf_counter() - accepting) * 1000)
        return fill_ms, accept_ms


def format_table(vocab_size: int, results: dict[str, LibraryResult], opts: MaskBenchOptions) -> str:
    lines = [f"Grammar mask cost per decode step at batch {opts.batch}: tokenizer {opts.tokenizer_source} "
             f"(vocab {vocab_size}), {opts.steps} steps x {opts.rounds} rounds, libraries interleaved per round",
             "", "| library | fill ms/step (median [min-max] of rounds) | accept ms/step | us per row-token "
             "| compile ms (4 schemas, cold) | documents done |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        fill, accept = statistics.median(r.fill_ms), statistics.median(r.accept_ms)
        lines.append(f"| {name} | {fill:.3f} [{min(r.fill_ms):.3f}-{max(r.fill_ms):.3f}] | {accept:.3f} "
                     f"| {(fill + accept) * 1000 / opts.batch:.1f} | {r.compile_ms:.1f} | {r.documents} |")
    return "\n".join(lines)


def register(kinds) -> None:
    """Add `dvd bench guided-mask` to the `dvd bench` sub-commands."""
    p = kinds.add_parser("guided-mask", help="grammar token-mask cost per decode step: xgrammar vs llguidance")
    p.add_argument("--tokenizer", default="1b-shape", help="a preset (tokenizer built offline) or a checkpoint dir")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=64, help="decode steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=main)


def main(a) -> int:
    if min(a.batch, a.steps, a.rounds) < 1:
        raise SystemExit("--batch, --steps and --rounds must be positive")
    opts = MaskBenchOptions(a.tokenizer, a.batch, a.steps, a.rounds)
    print(format_table(*run_mask_bench(opts), opts))
    return 0
