"""`dvd`: the command line. `dvd make-checkpoint` writes a seeded random-init checkpoint;
`dvd serve` runs gateway + vision + language on this machine."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from dvd.config import DEFAULT_MODEL, RESIZE_ON_DEVICE
from dvd.flags import add_decode_attention, setup_logging
from stack.launcher import LocalStack, StackOptions
from stack.supervisor import RestartPolicy, Supervisor
from tools.bench import commands as bench_commands
from tools.bench import fault_commands, transport
from tools.bench import guided as bench_guided
from tools.bench import guided_mask as bench_guided_mask
from tools.bench import vir as bench_vir
from tools.bench import vision as bench_vision
from tools.bench import vit as bench_vit
from tools.checkpoint import PRESETS, ensure_checkpoint, make_checkpoint


def cmd_make_checkpoint(a: argparse.Namespace) -> int:

    path = make_checkpoint(a.preset, Path(a.out), seed=a.seed)
    print(f"wrote {a.preset} checkpoint (seed {a.seed}) to {path}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    checkpoint = ensure_checkpoint(a.model, Path(a.checkpoint_root))
    if a.ray:
        return cmd_serve_ray(a, checkpoint)
    opts = StackOptions(
        checkpoint=checkpoint, host=a.host, port=a.port, grpc_port=a.grpc_port, monolithic=a.monolithic,
        vision_replicas=a.vision_replicas, language_replicas=a.language_replicas, model_name=a.model_name,
        device=a.device, dtype=a.dtype, redis_url=a.redis, log_dir=Path(a.log_dir) if a.log_dir else None,
        threads=a.threads, chat_template=a.chat_template, batch_invariant=a.batch_invariant,
        prefix_caching=not a.no_prefix_caching, decode_attention=a.decode_attention,
        tls_ca=a.tls_ca, tls_cert=a.tls_cert, tls_key=a.tls_key,
        gateway_args=["--api-keys-file", a.api_keys_file] if a.api_keys_file else [], vision_args=_vision_args(a),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack(opts)
    print(f"starting dvd-serve ({'monolithic' if a.monolithic else 'disaggregated'}) with {checkpoint} ...", flush=True)
    stack.start()
    supervisor = Supervisor(stack, RestartPolicy(max_restarts=a.max_restarts)).start()
    try:
        print(f"ready.\n  REST (OpenAI): {stack.base_url}\n  gRPC gateway:  {stack.grpc_target}\n"
              f"  vision pool:   {', '.join(stack.vision_targets)}\n  language pool: {', '.join(stack.language_targets)}\n"
              f"  model name:    {a.model_name}\n  metrics:       "
              + "\n                 ".join(f"{p.name} {p.metrics_url}" for p in stack.procs if p.metrics_url)
              + "\nA process that crashes is restarted (with backoff). Ctrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        print("stopping ...", flush=True)
        supervisor.stop()
        stack.stop()


def _vision_args(a: argparse.Namespace) -> list[str]:
    """The vision replicas' own flags that `dvd serve` passes through."""
    workers = ["--preprocess-workers", str(a.preprocess_workers)] if a.preprocess_workers else []
    resize = ["--resize-on-device", a.resize_on_device] if a.resize_on_device != "auto" else []
    return workers + resize + (["--fast-decode"] if a.fast_decode else [])


def cmd_serve_ray(a: argparse.Namespace, checkpoint: Path | str) -> int:
    if a.monolithic or a.redis or a.chat_template != "checkpoint":
        sys.exit("dvd serve --ray: --monolithic, --redis and --chat-template are for the process stack, not Ray")
    try:
        from stack.ray_serve.local import LocalOptions, serve_forever
    except ImportError as exc:
        sys.exit(f"dvd serve --ray needs the `ray` extra (pip install -e '.[ray]'): {exc}")
    return serve_forever(LocalOptions(
        model=str(checkpoint), model_name=a.model_name, device=a.device, dtype=a.dtype, host=a.host, port=a.port,
        grpc_port=a.grpc_port, num_cpus=a.num_cpus, max_vision_replicas=a.max_vision_replicas,
        max_language_replicas=a.max_language_replicas,
    ))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dvd", description="Decoupled vision-language serving for InternVL")
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-checkpoint", help="write a seeded random-init InternVL checkpoint")
    mk.add_argument("--preset", choices=sorted(PRESETS), required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=cmd_make_checkpoint)
    sv = sub.add_parser("serve", help="run gateway + vision + language on this machine")
    sv.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint dir, hub id, or a preset {sorted(PRESETS)}")
    sv.add_argument("--checkpoint-root", default="checkpoints", help="where preset checkpoints are written")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000, help="gateway REST port")
    sv.add_argument("--grpc-port", type=int, default=50050, help="gateway gRPC port")
    sv.add_argument("--monolithic", action="store_true", help="vision + language in one process (colocated)")
    sv.add_argument("--redis", default="", help="redis://host:port/db: shared embedding cache (optional)")
    sv.add_argument("--threads", type=int, default=0,
                    help="torch threads per model process (0: torch's default, one per core each)")
    sv.add_argument("--batch-invariant", action="store_true",
                    help="language engines give bit-identical outputs whatever else is batched (slower; see README)")
    sv.add_argument("--no-prefix-caching", action="store_true",
                    help="language engines prefill every prompt in full (default: reuse cached prefixes' KV)")
    add_decode_attention(sv)
    sv.add_argument("--vision-replicas", type=int, default=1)
    sv.add_argument("--preprocess-workers", type=int, default=0,
                    help="decode/resize/tile threads per vision replica (0: one per CPU it may use)")
    sv.add_argument("--fast-decode", action="store_true",
                    help="vision replicas decode large JPEGs at reduced size (faster; changes pixels)")
    sv.add_argument("--resize-on-device", choices=RESIZE_ON_DEVICE, default="auto",
                    help="vision replicas resize and tile on their device, bit-identical to Pillow (auto: on CUDA)")
    sv.add_argument("--language-replicas", type=int, default=1)
    sv.add_argument("--model-name", default="internvl", help="the model id clients send")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--dtype", default="auto")
    sv.add_argument("--chat-template", default="checkpoint",
                    help="the language pool's prompt template: checkpoint | internvl2_5 | PATH.jinja")
    sv.add_argument("--log-dir", default="", help="write each process's log here instead of the terminal")
    sv.add_argument("--max-restarts", type=int, default=5,
                    help="a process that crashes more often than this within 5 minutes is not restarted again")
    sv.add_argument("--ray", action="store_true", help="run the pools as autoscaling Ray Serve deployments on a "
                    "local Ray (the `ray` extra); REST on --port, gRPC on --grpc-port")
    sv.add_argument("--num-cpus", type=int, default=None, help="--ray: CPUs of the local Ray (default: all)")
    sv.add_argument("--max-vision-replicas", type=int, default=3, help="--ray: the vision pool scales 1..N")
    sv.add_argument("--max-language-replicas", type=int, default=1, help="--ray: the language pool scales 1..N")
    sv.add_argument("--tls-ca", default="", help="PEM CA: mTLS on every internal hop (with --tls-cert/--tls-key)")
    sv.add_argument("--tls-cert", default="", help="PEM certificate every service serves and presents; "
                    "the gateway's public ports serve it too")
    sv.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    sv.add_argument("--api-keys-file", default="", help="gateway API keys, one `KEY [TENANT]` a line")
    sv.set_defaults(func=cmd_serve)
    add_bench_parsers(sub.add_parser("bench", help="benchmarks that print side-by-side ratios"))
    bench_commands.register_plan(sub)
    return parser


def add_bench_parsers(bench: argparse.ArgumentParser) -> None:
    """`dvd bench <what>`: one sub-command per benchmark."""
    kinds = bench.add_subparsers(dest="bench", required=True)
    en = kinds.add_parser("engine", help="the language engine vs transformers generate, Poisson, KV capacity")
    en.add_argument("--preset", default="small", help=f"a preset {sorted(PRESETS)} or a checkpoint dir")
    en.add_argument("--checkpoint-root", default="checkpoints", help="where preset checkpoints are written")
    en.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrencies, the first is the base")
    en.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request")
    en.add_argument("--prompt-tokens", type=int, default=170, help="approximate prompt length")
    en.add_argument("--repeats", type=int, default=3, help="runs per concurrency (median reported)")
    en.add_argument("--device", default="auto")
    en.add_argument("--dtype", default="auto")
    en.add_argument("--attention", default="auto", help="auto | sdpa | eager | flash_attention_2")
    en.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on a GPU")
    add_decode_attention(en)
    en.add_argument("--batch-invariant", action="store_true", help="measure the bit-exact mode instead")
    en.add_argument("--layers", choices=("both", "fused", "stock"), default="both",
                    help="the engine's decoder layers in batched forwards: both (fused and stock alternating, "
                         "each next to generate), fused (the service default) or stock (transformers')")
    en.add_argument("--no-baseline", action="store_true", help="skip transformers generate (and Poisson)")
    en.add_argument("--poisson-requests", type=int, default=48, help="0 skips the Poisson comparison")
    en.add_argument("--poisson-rate", type=float, default=0.0, help="requests/s (0: the engine's top request rate)")
    en.add_argument("--prefix-cache-conversations", type=int, default=16,
                    help="chats whose second turn runs with the prefix cache on and off (0 skips it)")
    en.add_argument("--json", default="", help="also write the results to this JSON file")
    en.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default, one per core); a replica pinned with --cpus "
                         "gets one per pinned CPU")
    en.set_defaults(func=cmd_bench_engine)
    transport.register(kinds)
    bench_vir.register(kinds)
    bench_vit.register(kinds)
    bench_guided_mask.register(kinds)
    bench_guided.register(kinds)
    bench_vision.register(kinds)
    bench_commands.register_bench(kinds)
    fault_commands.register(kinds)


def cmd_bench_engine(a: argparse.Namespace) -> int:
    import json

    from tools.bench.engine import EngineBenchOptions, run_engine_bench
    from tools.bench.engine_report import format_table

    checkpoint = ensure_checkpoint(a.preset, Path(a.checkpoint_root))
    opts = EngineBenchOptions(
        checkpoint=Path(checkpoint), concurrency=tuple(int(c) for c in a.concurrency.split(",")),
        max_tokens=a.max_tokens, prompt_tokens=a.prompt_tokens, repeats=a.repeats, device=a.device, dtype=a.dtype,
        attention=a.attention, threads=a.threads, cuda_graphs=not a.no_cuda_graphs, batch_invariant=a.batch_invariant,
        layers=a.layers, baseline=not a.no_baseline, poisson_requests=a.poisson_requests, poisson_rate=a.poisson_rate,
        prefix_cache_conversations=a.prefix_cache_conversations, decode_attention=a.decode_attention)
    result = run_engine_bench(opts)
    print(format_table(result, opts))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging("INFO")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
