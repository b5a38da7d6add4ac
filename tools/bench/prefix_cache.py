"""`dvd bench engine`'s prefix-cache section: the second turn of chat conversations, with the
engine's prefix cache on and off (same replica, same weights, the cache cleared before each).

Method. `concurrency` conversations. Turn 1: each distinct ~`prompt_tokens`-token prompt with
`reply_tokens` greedy tokens, all submitted at once. Turn 2: the same conversation rendered again
by the replica's own chat template (`PromptBuilder.build`: the first user message, the reply's
text as the assistant message, a follow-up question), `reply_tokens` more tokens, all submitted
at once; timed: mean time to first token (submission to the first streamed token) and the
whole turn's tokens/s. Re-rendering is what a chat client does: the turn-2 prompt re-tokenizes
the reply's text, so its cached prefix ends wherever the template or the tokenizer's round trip
first differs from turn 1's tokens. On and off alternate (which goes first alternates per
repeat); the ratios are medians of the paired repeats."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from dvd.types import Message, TextPart
from tools.bench.engine import WORDS, _Tracker, submit

FOLLOW_UP = "Thank you. Now tell me more about the second point, with an example."


@dataclass
class PrefixCacheResult:
    concurrency: int
    turn2_prompt_tokens: float = 0.0  # mean
    cached_fraction: float = 0.0  # of turn-2 prompt positions, prefix cache on (mean over repeats)
    ttft_s: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})  # mean per repeat
    tokens_per_s: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})

    def ratio(self, metric: str) -> float:
        """Median paired off/on (TTFT: how much sooner) or on/off (tokens/s)."""
        values = self.ttft_s if metric == "ttft" else self.tokens_per_s
        pairs = [off / on if metric == "ttft" else on / off for on, off in zip(values["on"], values["off"])]
        return statistics.median(pairs)


def _conversation(index: int, prompt_tokens: int) -> str:
    words = [WORDS[(index + k) % len(WORDS)] for k in range(prompt_tokens)]
    return f"Conversation {index}: {' '.join(words)}"


def _turn(core, prompts: list[list[int]], reply_tokens: int) -> tuple[list[_Tracker], float, float]:
    started = time.perf_counter()
    trackers = [submit(core, p, reply_tokens) for p in prompts]
    for tracker in trackers:
        tracker.wait()
    wall = max(t.finished_s for t in trackers) - started
    return trackers, statistics.mean(t.first_s - started for t in trackers), wall


def second_turn(core, concurrency: int, prompt_tokens: int, reply_tokens: int, repeats: int) -> PrefixCacheResult:
    blocks = core.engine.scheduler.blocks
    enabled = blocks.prefix_caching
    firsts = [_conversation(i, prompt_tokens * 3 // 4) for i in range(concurrency)]  # ~4/3 tokens per word
    turn1 = [core.prompts.build([Message("user", (TextPart(t),))], []).token_ids for t in firsts]
    result = PrefixCacheResult(concurrency)
    try:
        for repeat in range(repeats):
            for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
                blocks.prefix_caching = mode == "on"
                blocks.clear_cache()
                replies, _, _ = _turn(core, turn1, reply_tokens)
                turn2 = [core.prompts.build([Message("user", (TextPart(first),)),
                                             Message("assistant", (TextPart(core.tokenizer.decode(r.token_ids)),)),
                                             Message("user", (TextPart(FOLLOW_UP),))], []).token_ids
                         for first, r in zip(firsts, replies)]
                hits = blocks.hit_tokens
                _, ttft, wall = _turn(core, turn2, reply_tokens)
                result.ttft_s[mode].append(ttft)
                result.tokens_per_s[mode].append(concurrency * reply_tokens / wall)
                result.turn2_prompt_tokens = statistics.mean(len(p) for p in turn2)
                if mode == "on":
                    result.cached_fraction += (blocks.hit_tokens - hits) / sum(len(p) for p in turn2) / repeats
    finally:
        blocks.prefix_caching = enabled
        blocks.clear_cache()
    return result


def format_prefix_cache(r: PrefixCacheResult, reply_tokens: int) -> list[str]:
    on, off = (statistics.median(r.ttft_s[m]) for m in ("on", "off"))
    return [f"Prefix cache, second chat turn ({r.concurrency} conversations at once, turn-2 prompts of "
            f"{r.turn2_prompt_tokens:.0f} tokens re-rendered by the chat template, {reply_tokens} tokens per reply): "
            f"{100 * r.cached_fraction:.0f}% of turn-2 prompt positions cached; mean time to first token "
            f"{1e3 * on:.0f} ms on vs {1e3 * off:.0f} ms off ({r.ratio('ttft'):.2f}x sooner), turn-2 tokens/s "
            f"{statistics.median(r.tokens_per_s['on']):.1f} vs {statistics.median(r.tokens_per_s['off']):.1f} "
            f"({r.ratio('tokens'):.2f}x); per repeat TTFT off/on: "
            + ", ".join(f"{off_ / on_:.2f}" for on_, off_ in zip(r.ttft_s["on"], r.ttft_s["off"]))]
