"""`dvd bench soak` and `dvd bench overload`: the reliability benchmarks (RELIABILITY.md)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def _out(a: argparse.Namespace, name: str) -> Path:
    out = Path(a.out_dir or f"bench-results/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_soak(a: argparse.Namespace) -> int:
    from tools.bench.soak import SoakOptions, run_soak, summary
    from tools.checkpoint import ensure_checkpoint

    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = _out(a, "soak")
    opts = SoakOptions(checkpoint=Path(ensure_checkpoint(a.preset, Path(a.checkpoint_root))), log_dir=out / "logs",
                       num_requests=a.num_requests, concurrency=a.concurrency, reuse=a.reuse_pct / 100,
                       faults=tuple(f for f in a.faults.split(",") if f), store_max_mib=a.store_max_mib)
    result = summary(run_soak(opts))
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) + f"\n\nresults: {out}/soak.json")
    return 0 if not result["unexplained_failures"] and not result["hung"] else 1


def cmd_overload(a: argparse.Namespace) -> int:
    from tools.bench.overload import OverloadOptions, format_rounds, run_overload
    from tools.checkpoint import ensure_checkpoint

    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = _out(a, "overload")
    opts = OverloadOptions(checkpoint=Path(ensure_checkpoint(a.preset, Path(a.checkpoint_root))), log_dir=out / "logs",
                           max_concurrent=a.max_concurrent, num_requests=a.num_requests, rounds=a.rounds)
    rounds = run_overload(opts)
    (out / "overload.json").write_text(json.dumps(rounds, indent=1))
    print(format_rounds(rounds) + f"\n\nresults: {out}/overload.json")
    return 0


def register(kinds) -> None:
    so = kinds.add_parser("soak", help="a long run with replica kills and a Redis restart: lost, hung, memory slope")
    so.add_argument("--preset", default="tiny")
    so.add_argument("--checkpoint-root", default="checkpoints")
    so.add_argument("--num-requests", type=int, default=2000)
    so.add_argument("--concurrency", type=int, default=8)
    so.add_argument("--reuse-pct", type=float, default=50)
    so.add_argument("--faults", default="vision-1,language-1,redis,vision-0,language-0",
                    help="injected in this order at evenly spaced points: a process name (SIGKILL) or redis")
    so.add_argument("--store-max-mib", type=int, default=16,
                    help="vision embedding store cap: filled early, so later memory growth would be a leak")
    so.add_argument("--out-dir", default="")
    so.set_defaults(func=cmd_soak)
    ov = kinds.add_parser("overload", help="p99 TTFT of admitted requests at 2x the sustainable load vs unloaded")
    ov.add_argument("--preset", default="tiny")
    ov.add_argument("--checkpoint-root", default="checkpoints")
    ov.add_argument("--max-concurrent", type=int, default=2, help="the gateway's --max-concurrent-requests")
    ov.add_argument("--num-requests", type=int, default=60, help="per point")
    ov.add_argument("--rounds", type=int, default=2)
    ov.add_argument("--out-dir", default="")
    ov.set_defaults(func=cmd_overload)
