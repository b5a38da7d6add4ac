#!/usr/bin/env python3
"""Container HEALTHCHECK: a grpc.health.v1 probe, like grpc_health_probe, in the image's Python.

    dvd-healthcheck [--addr HOST:PORT] [--service NAME] [--timeout-s S]

Exit 0 when the service reports SERVING, 1 otherwise. `--service ""` (the default) asks for
liveness; a service name ("dvd.v1.VisionEncoder", "dvd.v1.LanguageDecoder", "dvd.v1.Gateway")
asks for readiness (weights loaded and warmed up). Without --addr the services' default gRPC
ports are tried in turn (gateway 50050, vision 50051, language 50052), so the one image needs no
per-role setting; DVD_HEALTH_ADDR and DVD_HEALTH_SERVICE set the defaults of the two flags.
Kubernetes does not use this (its pods have native gRPC probes); Docker and Compose do.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRS = ("127.0.0.1:50050", "127.0.0.1:50051", "127.0.0.1:50052")


def check(addr: str, service: str, timeout_s: float) -> str:
    """The reported status name, or the gRPC error code's name when the call fails."""
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dvd-healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--addr", default=os.environ.get("DVD_HEALTH_ADDR", ""), help="default: try 50050, 50051, 50052")
    p.add_argument("--service", default=os.environ.get("DVD_HEALTH_SERVICE", ""), help='"" = liveness')
    p.add_argument("--timeout-s", type=float, default=3.0)
    a = p.parse_args(argv)
    for addr in [a.addr] if a.addr else DEFAULT_ADDRS:
        status = check(addr, a.service, a.timeout_s)
        if status == "SERVING":
            return 0
        print(f"{addr} {a.service or '(liveness)'}: {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
