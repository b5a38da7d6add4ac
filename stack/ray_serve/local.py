"""A single-machine Ray cluster running the Serve application: what `dvd serve --ray` starts
(`serve_forever`) and what tests/stack/ray drives (`LocalRayServe`). The machine's CPUs (and GPUs)
are shared out so that every pool can reach its max_replicas: each replica asks for an equal
slice, the I/O-bound gateway for none."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve

from stack.ray_serve.app import APP_NAME, GATEWAY_SERVICER, build
from stack.ray_serve.config import (
    GATEWAY_AUTOSCALING,
    LANGUAGE_AUTOSCALING,
    VISION_AUTOSCALING,
    DeploymentSpec,
    RayAppConfig,
)


@dataclass(frozen=True)
class LocalOptions:
    model: str  # a checkpoint directory (or hub id)
    model_name: str = "internvl"
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000  # Serve's HTTP proxy: the OpenAI REST endpoint
    grpc_port: int = 50050  # Serve's gRPC proxy: dvd.v1.Gateway
    num_cpus: int | None = None  # None: all of this machine's
    max_vision_replicas: int = 3
    max_language_replicas: int = 1
    vision_autoscaling: dict[str, Any] = field(default_factory=dict)  # merged over the defaults
    language_autoscaling: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_vision_replicas < 1 or self.max_language_replicas < 1:
            raise ValueError("each pool needs max replicas >= 1")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")


def local_app_config(opts: LocalOptions, num_cpus: float, num_gpus: float) -> RayAppConfig:
    """Per-replica slices of this machine's CPUs and GPUs such that both pools fit at their max.
    A replica with no GPU slice sees no GPU (Ray hides them), so on a GPU machine each gets one."""
    slots = opts.max_vision_replicas + opts.max_language_replicas
    cpus, gpus = num_cpus / slots, num_gpus / slots

    def pool(defaults: dict, overrides: dict, max_replicas: int, max_ongoing: int) -> DeploymentSpec:
        autoscaling = {**defaults, "max_replicas": max_replicas, **overrides}
        autoscaling["min_replicas"] = min(autoscaling["min_replicas"], autoscaling["max_replicas"])
        return DeploymentSpec(cpus, gpus, max_ongoing, autoscaling)

    return RayAppConfig(
        model=opts.model, model_name=opts.model_name, device=opts.device, dtype=opts.dtype,
        vision_grpc_host=opts.host if opts.host not in ("0.0.0.0", "::") else "0.0.0.0",
        vision=pool(VISION_AUTOSCALING, opts.vision_autoscaling, opts.max_vision_replicas, 16),
        language=pool(LANGUAGE_AUTOSCALING, opts.language_autoscaling, opts.max_language_replicas, 32),
        gateway=DeploymentSpec(0.0, 0.0, 256, {**GATEWAY_AUTOSCALING, "min_replicas": 1, "max_replicas": 1}),
    )


class LocalRayServe:
    """`start()` a fresh local Ray, deploy the app and wait until it runs; `stop()` tears both down."""

    def __init__(self, opts: LocalOptions) -> None:
        self.opts = opts
        self.config: RayAppConfig | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.opts.host}:{self.opts.port}/v1"

    @property
    def grpc_target(self) -> str:
        return f"{self.opts.host}:{self.opts.grpc_port}"

    def start(self) -> LocalRayServe:
        # address="local": always a new cluster, never one a `ray start` left running here.
        ray.init(address="local", num_cpus=self.opts.num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING)
        try:
            resources = ray.cluster_resources()
            self.config = local_app_config(self.opts, resources.get("CPU", 1.0), resources.get("GPU", 0.0))
            serve.start(http_options={"host": self.opts.host, "port": self.opts.port},
                        grpc_options={"port": self.opts.grpc_port, "grpc_servicer_functions": [GATEWAY_SERVICER]})
            serve.run(build(self.config), name=APP_NAME, route_prefix="/")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()

    def __enter__(self) -> LocalRayServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def replica_counts(app_name: str = APP_NAME) -> dict[str, dict[str, int]]:
    """{deployment: {replica state: count}} from `serve.status()`, e.g. {"vision": {"RUNNING": 2}}."""
    app = serve.status().applications[app_name]
    return {name: {getattr(state, "value", str(state)): n for state, n in d.replica_states.items()}
            for name, d in app.deployments.items()}


def serve_forever(opts: LocalOptions) -> int:
    """`dvd serve --ray`: start, print the endpoints and the pools' scaling ranges, print the
    replica counts whenever they change, until SIGINT/SIGTERM; then shut Serve and Ray down."""
    print(f"starting dvd-serve on a local Ray ({opts.num_cpus or 'all'} CPUs) with {opts.model} ...", flush=True)
    with LocalRayServe(opts) as local:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        endpoints = [f"  REST (OpenAI): {local.base_url}\n", f"  gRPC gateway:  {local.grpc_target}\n",
                     _describe("vision", local.config.vision), _describe("language", local.config.language),
                     f"  model name:    {opts.model_name}\n",
                     "Replica counts are printed as the pools scale. Ctrl-C stops everything."]
        print("ready.\n" + "".join(endpoints), flush=True)
        seen: dict[str, dict[str, int]] = {}
        while True:
            counts = replica_counts()
            if counts != seen:
                print(time.strftime("%H:%M:%S"), "  ".join(f"{name} {states}" for name, states in counts.items()),
                      flush=True)
                seen = counts
            if stop.wait(2.0):
                break
        print("stopping ...", flush=True)
    return 0


def _describe(name: str, spec: DeploymentSpec) -> str:
    scaling = spec.autoscaling
    return (f"  {name + ' pool:':14} {scaling['min_replicas']}..{scaling['max_replicas']} replicas, "
            f"{spec.num_cpus:.3g} CPU each, target {scaling['target_ongoing_requests']} ongoing requests per replica\n")
