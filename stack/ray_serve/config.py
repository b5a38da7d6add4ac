"""The Ray Serve application's one config: what model to serve and, per deployment (vision pool,
language pool, gateway), the Serve options Ray schedules and autoscales it with. Built once, from
`dvd serve --ray` flags or from the `args` of a serveConfigV2 application (KubeRay RayService)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Serve's autoscaler compares each deployment's ongoing requests per replica (queued at the
# handles + executing) with its target. The targets mirror the Kubernetes HPAs (deploy/k8s):
# a GPU vision replica runs two or three images' tiles per ViT step (32 tiles); a language
# replica decodes 16 sequences at once and is full at 12. Vision reacts fast (an image burst is short-lived),
# language slowly (a replica is costly to load, decode work is long-lived).
VISION_AUTOSCALING = {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 4,
                      "upscale_delay_s": 10.0, "downscale_delay_s": 120.0}
LANGUAGE_AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 12,
                        "upscale_delay_s": 30.0, "downscale_delay_s": 300.0}
GATEWAY_AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64,
                       "upscale_delay_s": 30.0, "downscale_delay_s": 300.0}


@dataclass(frozen=True)
class DeploymentSpec:
    """The Serve options of one deployment. `autoscaling` is Serve's `autoscaling_config`."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 16  # per replica; beyond it requests wait at the caller's handle
    autoscaling: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. a node type

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0 or self.max_ongoing_requests < 1:
            raise ValueError(f"bad deployment resources: {self}")
        low, high = self.autoscaling.get("min_replicas", 1), self.autoscaling.get("max_replicas", 1)
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {low}, {high}")

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        actor = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        return {"ray_actor_options": {**actor, "resources": dict(self.resources)} if self.resources else actor,
                "max_ongoing_requests": self.max_ongoing_requests, "autoscaling_config": dict(self.autoscaling)}


@dataclass(frozen=True)
class RayAppConfig:
    """model: a checkpoint directory (on every Ray node) or a hub id. device/dtype as the services'
    `--device`/`--dtype`. vision_grpc_host/port: where each vision replica serves FetchEmbedding to
    the language replicas (host 0.0.0.0: every interface, advertised as the Ray node's IP; port 0: a
    free port per replica, so several replicas share a node)."""

    model: str
    model_name: str = "internvl"
    device: str = "auto"
    dtype: str = "auto"
    vision_grpc_host: str = "0.0.0.0"
    vision_grpc_port: int = 0
    vision: DeploymentSpec = field(default_factory=lambda: DeploymentSpec(1.0, 0.0, 16, dict(VISION_AUTOSCALING)))
    language: DeploymentSpec = field(default_factory=lambda: DeploymentSpec(1.0, 0.0, 32, dict(LANGUAGE_AUTOSCALING)))
    gateway: DeploymentSpec = field(default_factory=lambda: DeploymentSpec(0.5, 0.0, 256, dict(GATEWAY_AUTOSCALING)))

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is required (a checkpoint directory or a hub id)")
        if not 0 <= self.vision_grpc_port < 65536:
            raise ValueError(f"vision_grpc_port must be in [0, 65535], got {self.vision_grpc_port}")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RayAppConfig:
        """From a serveConfigV2 application's `args` (model, model_name, device, dtype, vision_grpc_*).
        The deployments' resources and autoscaling there belong in the config's own `deployments:`
        list, which Serve applies over the defaults set here."""
        known = {f.name for f in fields(cls)} - {"vision", "language", "gateway"}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"unknown dvd-serve Ray app args {sorted(unknown)}; known: {sorted(known)} "
                             "(per-deployment options go in the serve config's `deployments:`)")
        return cls(**args)
