"""Command-line flags shared by the service entrypoints, turned into config objects."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dvd.config import DECODE_ATTENTION, DeviceConfig
from dvd.tls import TlsFiles


def add_common(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, default=default_port, help="gRPC port (0: pick a free one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    parser.add_argument("--drain-grace-s", type=float, default=30.0, help="seconds to finish in-flight work on SIGTERM")
    parser.add_argument("--log-level", default="INFO")
    add_cpus(parser)
    add_server_tls(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch compute threads (0: one per pinned CPU, else torch's default: one per core)")


def add_decode_attention(parser: argparse.ArgumentParser) -> None:
    """`--decode-attention` (LanguageConfig.decode_attention), for every command that runs engines."""
    parser.add_argument("--decode-attention", choices=DECODE_ATTENTION, default="auto",
                        help="decode attention on a GPU: auto (flash-attn's paged kernel when installed, else "
                             "gather), gather (keys gathered, then SDPA), triton (paged Triton kernel, reads the "
                             "cache in place)")


def add_cpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpus", default="", help="pin the process to these CPUs, e.g. 0 or 0,1 or 0-3 "
                        "(torch then uses one compute thread per CPU); empty: no pinning")


def parse_cpus(text: str) -> tuple[int, ...]:
    """`0`, `0,2`, `0-3`, `0-1,4` -> sorted CPU ids; empty -> ()."""
    cpus: set[int] = set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        first, sep, last = item.partition("-")
        cpus.update(range(int(first), int(last) + 1) if sep else (int(first),))
    if any(cpu < 0 for cpu in cpus):
        raise ValueError(f"bad --cpus {text!r}")
    return tuple(sorted(cpus))


def pin_cpus(cpus: tuple[int, ...]) -> None:
    """Pin every thread of this process to `cpus` (threads made later inherit it) and size
    torch's thread pools to match: one intra-op thread per CPU, one inter-op thread. Call once,
    at startup, before any compute runs."""
    if not cpus:
        return
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        os.sched_setaffinity(int(tid), cpus)
    torch = sys.modules.get("torch")  # the gateway never imports torch; model services already have
    if torch is not None:
        torch.set_num_threads(len(cpus))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # set once already, or inter-op work has started: it stays as it is
            pass


def device_config(args: argparse.Namespace) -> DeviceConfig:
    """The device flags as a DeviceConfig. Every model service calls this once, at startup in its
    main thread, before it loads anything, so this is also where `--cpus` takes effect."""
    pin_cpus(parse_cpus(getattr(args, "cpus", "")))
    if getattr(args, "threads", 0) < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if getattr(args, "threads", 0):
        import torch  # model services only: the gateway never imports torch

        torch.set_num_threads(args.threads)
    return DeviceConfig(device=args.device, dtype=args.dtype, attn_implementation=getattr(args, "attn_implementation", "auto"))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_server_tls(parser: argparse.ArgumentParser) -> None:
    """--tls-cert/--tls-key (serve TLS), --tls-client-ca (require client certificates: mTLS) and
    --health-port (plaintext health alone, for Kubernetes' gRPC probes, which speak no TLS)."""
    parser.add_argument("--tls-cert", default="", help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", default="", help="PEM CA: require client certificates it signed (mTLS)")
    parser.add_argument("--health-port", type=int, default=0,
                        help="also serve gRPC health alone, in plaintext, on this port (probes); 0: not")


def add_client_tls(parser: argparse.ArgumentParser, prefix: str, peer: str) -> None:
    """--PREFIX-ca (verify `peer`), --PREFIX-cert/--PREFIX-key (present a client certificate)."""
    parser.add_argument(f"--{prefix}-ca", default="", help=f"PEM CA that {peer}'s TLS certificate chains to")
    parser.add_argument(f"--{prefix}-cert", default="", help=f"PEM client certificate for {peer} (mTLS)")
    parser.add_argument(f"--{prefix}-key", default="", help=f"PEM private key of --{prefix}-cert")
    parser.add_argument(f"--{prefix}-server-name", default="",
                        help=f"name {peer}'s certificate must carry (default: the host dialled)")


def add_redis(parser: argparse.ArgumentParser, what: str) -> None:
    """--redis URL (redis:// or rediss://), its TLS files and a password file (AUTH)."""
    parser.add_argument("--redis", default="", help=f"redis://host:port/db or rediss:// (TLS): {what}")
    parser.add_argument("--redis-password-file", default="",
                        help="file holding the Redis AUTH password (kept out of URLs, logs and refs)")
    add_client_tls(parser, "redis-tls", "Redis")


def server_tls(args: argparse.Namespace) -> TlsFiles:
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def client_tls(args: argparse.Namespace, prefix: str) -> TlsFiles:
    p = prefix.replace("-", "_")
    return TlsFiles(getattr(args, f"{p}_cert"), getattr(args, f"{p}_key"), getattr(args, f"{p}_ca"),
                    getattr(args, f"{p}_server_name"))


def read_secret(path: str) -> str:
    """A secret file's contents, stripped; "" when no path is given. Read once, at startup."""
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()
