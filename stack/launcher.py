"""Starts a whole dvd-serve stack on this machine as separate processes (what `dvd serve`
runs and what the integration tests drive): vision replica(s), language replica(s) (or one
monolithic process), then the gateway; waits for readiness; stops them all cleanly. Each process
keeps its ports for life, so one can be restarted in place (`restart`, `respawn`) and the gateway
finds it again by health; `stack.supervisor` restarts the ones that crash."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dvd.tls import TlsFiles, sync_channel

VISION_SERVICE = "dvd.v1.VisionEncoder"
LANGUAGE_SERVICE = "dvd.v1.LanguageDecoder"
GATEWAY_SERVICE = "dvd.v1.Gateway"


_HANDED_OUT: set[int] = set()
# Below Linux's default ephemeral range (32768-60999), from which both bind(0) and every outgoing
# connection draw: a port handed out there could be taken by a client socket before our process
# binds it. Each stack's processes bind their ports only after they start.
_PORT_RANGE = (20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, outside the ephemeral range, that this process has not handed out before
    (so two replicas, or a replica's gRPC and metrics ports, never get the same one)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(*_PORT_RANGE)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE} on {host}")


@dataclass
class StackOptions:
    checkpoint: Path
    host: str = "127.0.0.1"
    port: int = 0  # gateway REST; 0 picks a free port
    grpc_port: int = 0  # gateway gRPC
    monolithic: bool = False
    vision_replicas: int = 1
    language_replicas: int = 1
    model_name: str = "internvl"
    device: str = "auto"
    dtype: str = "auto"
    redis_url: str = ""  # shared embedding cache for the vision pool and the gateway
    chat_template: str = "checkpoint"  # the language processes' --chat-template
    # CPUs each role's processes are pinned to (their `--cpus`); empty: wherever the OS puts them
    vision_cpus: tuple[int, ...] = ()
    language_cpus: tuple[int, ...] = ()
    gateway_cpus: tuple[int, ...] = ()
    monolithic_cpus: tuple[int, ...] = ()
    # torch threads of each unpinned model process; 0: torch's default (one per core). Splitting the
    # cores among the processes was measured slower on 2 cores: the busy stage (vision) gets both
    # while the other idles (BENCHMARKS.md, "Threads per process")
    threads: int = 0
    batch_invariant: bool = False  # language engines keep solo == batched outputs bit for bit (slower)
    prefix_caching: bool = True  # language engines reuse the KV blocks of cached prefixes
    decode_attention: str = "auto"  # language engines' decode attention on a GPU (LanguageConfig)
    vision_args: list[str] = field(default_factory=list)
    language_args: list[str] = field(default_factory=list)
    gateway_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None  # each process logs to <name>.log here; None: inherit stdout/stderr
    ready_timeout_s: float = 900.0
    # mTLS on the internal hops (gateway -> pools, language -> vision): one PEM certificate and
    # key every service both serves and presents, and the CA that signed it; the gateway's public
    # ports (gRPC and REST) then serve TLS with the same certificate. Empty: plaintext.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    target: str
    service: str
    metrics_url: str = ""  # Prometheus endpoint of the process
    argv: list[str] = field(default_factory=list)  # what started it: a respawn runs it again
    restarts: int = 0


class LocalStack:
    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        self.procs: list[_Proc] = []
        self.rest_port = opts.port or free_port(opts.host)
        self.grpc_port = opts.grpc_port or free_port(opts.host)
        self.vision_targets: list[str] = []
        self.language_targets: list[str] = []

    @property
    def base_url(self) -> str:
        return f"{'https' if self.opts.tls_cert else 'http'}://{self.opts.host}:{self.rest_port}/v1"

    @property
    def grpc_target(self) -> str:
        return f"{self.opts.host}:{self.grpc_port}"

    def proc(self, name: str) -> _Proc:
        return next(p for p in self.procs if p.name == name)

    def start(self) -> LocalStack:
        try:
            self._start_pools()
            self.wait_ready()
            gateway_args = ["--host", self.opts.host, "--port", str(self.rest_port), "--grpc-port", str(self.grpc_port),
                            "--model-name", self.opts.model_name, "--model-root", str(self.opts.checkpoint)]
            gateway_args += [a for t in self.vision_targets for a in ("--vision", t)]
            gateway_args += [a for t in self.language_targets for a in ("--language", t)]
            gateway_args += ["--redis", self.opts.redis_url] if self.opts.redis_url else []
            gateway_args += self._tls_args("pool-tls")
            gateway_args += ["--tls-cert", self.opts.tls_cert, "--tls-key", self.opts.tls_key] if self.opts.tls_cert else []
            self._spawn("gateway", "gateway", gateway_args + self.opts.gateway_args, GATEWAY_SERVICE,
                        f"{self.opts.host}:{self.grpc_port}")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def respawn(self, name: str) -> None:
        """Start `name` again with the command line (and so the ports) it had; it must have exited."""
        proc = self.proc(name)
        if proc.popen.poll() is None:
            raise RuntimeError(f"{name} is still running")
        out = self._log(name)
        proc.popen = subprocess.Popen(proc.argv, stdout=out, stderr=subprocess.STDOUT if out else None)
        proc.restarts += 1

    def restart(self, name: str, timeout_s: float = 60.0) -> None:
        """A rolling-restart step: SIGTERM `name` (it drains), wait for it to exit, start it again on
        the same ports and wait until it is SERVING."""
        proc = self.proc(name)
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
        self.respawn(name)
        self.wait_ready([proc])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM everything (gateway first so no new work arrives), then wait, then kill."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.procs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_pools(self) -> None:
        common = ["--model", str(self.opts.checkpoint), "--host", self.opts.host,
                  "--device", self.opts.device, "--dtype", self.opts.dtype] + self._tls_args("tls")
        template = ["--chat-template", self.opts.chat_template]
        engine = (["--batch-invariant"] if self.opts.batch_invariant else []) + (
            [] if self.opts.prefix_caching else ["--no-prefix-caching"]) + [
            "--decode-attention", self.opts.decode_attention]
        if self.opts.monolithic:
            port = free_port(self.opts.host)
            target = f"{self.opts.host}:{port}"
            metrics = ["--metrics-port", str(free_port(self.opts.host))]
            self._spawn("monolithic", "stack.monolithic",
                        common + ["--port", str(port)] + metrics + template + engine,
                        LANGUAGE_SERVICE, target)
            self.vision_targets, self.language_targets = [target], [target]
            return
        redis = ["--redis", self.opts.redis_url] if self.opts.redis_url else []
        for i in range(self.opts.vision_replicas):
            port = free_port(self.opts.host)
            self.vision_targets.append(f"{self.opts.host}:{port}")
            metrics = ["--metrics-port", str(free_port(self.opts.host)), "--linger-s", "0.5"]  # local: quick stop
            self._spawn(f"vision-{i}", "vision_service",
                        common + ["--port", str(port)] + metrics + redis + self.opts.vision_args,
                        VISION_SERVICE, self.vision_targets[-1])
        for i in range(self.opts.language_replicas):
            port = free_port(self.opts.host)
            self.language_targets.append(f"{self.opts.host}:{port}")
            metrics = ["--metrics-port", str(free_port(self.opts.host))]  # replicas share a host: no fixed port
            self._spawn(f"language-{i}", "language_service",
                        common + ["--port", str(port)] + metrics + template + engine + redis
                        + self._tls_args("fetch-tls") + self.opts.language_args,
                        LANGUAGE_SERVICE, self.language_targets[-1])

    def _tls_args(self, prefix: str) -> list[str]:
        """Flags for the internal mTLS: `tls` = a server's, `pool-tls` / `fetch-tls` = a client's."""
        if not self.opts.tls_cert:
            return []
        ca = "client-ca" if prefix == "tls" else "ca"
        return [f"--{prefix}-cert", self.opts.tls_cert, f"--{prefix}-key", self.opts.tls_key,
                f"--{prefix}-{ca}", self.opts.tls_ca]
    def _log(self, name: str):
        if self.opts.log_dir is None:
            return None
        self.opts.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.opts.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process

    def _spawn(self, name: str, module: str, args: list[str], service: str, target: str) -> None:
        out = self._log(name)
        cpus = {"vision": self.opts.vision_cpus, "language": self.opts.language_cpus, "gateway": self.opts.gateway_cpus,
                "monolithic": self.opts.monolithic_cpus}[name.split("-")[0]]
        args = args + (["--cpus", ",".join(map(str, cpus))] if cpus else [])
        if module != "gateway" and not cpus and self.opts.threads:
            args = args + ["--threads", str(self.opts.threads)]
        argv = [sys.executable, "-m", module, *args]
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if out else None)
        metrics_url = ""
        if "--metrics-port" in args:
            metrics_url = f"http://{self.opts.host}:{args[args.index('--metrics-port') + 1]}/metrics"
        elif module == "gateway":
            metrics_url = f"http://{self.opts.host}:{self.rest_port}/metrics"
        self.procs.append(_Proc(name, popen, target, service, metrics_url, argv))

    def wait_ready(self, procs: list[_Proc] | None = None) -> None:
        deadline = time.monotonic() + self.opts.ready_timeout_s
        for proc in self.procs if procs is None else procs:
            with sync_channel(proc.target, TlsFiles(self.opts.tls_cert, self.opts.tls_key, self.opts.tls_ca)) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while not _serving(stub, proc.service):
                    if proc.popen.poll() is not None:
                        raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode} before it was ready")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{proc.name} not ready after {self.opts.ready_timeout_s:.0f} s")
                    time.sleep(0.2)


def _serving(stub, service: str) -> bool:
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
