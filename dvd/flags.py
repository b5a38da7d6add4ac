"""Command-line flags shared by the service entrypoints, turned into config objects."""

from __future__ import annotations

import argparse
import logging

from dvd.config import DeviceConfig


def add_common(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, default=default_port, help="gRPC port (0: pick a free one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    parser.add_argument("--drain-grace-s", type=float, default=30.0, help="seconds to finish in-flight work on SIGTERM")
    parser.add_argument("--log-level", default="INFO")


def device_config(args: argparse.Namespace) -> DeviceConfig:
    return DeviceConfig(device=args.device, dtype=args.dtype, attn_implementation=getattr(args, "attn_implementation", "auto"))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
