"""Builds the Ray Serve application: gateway ingress -> vision and language deployments, each with
its own resources and `autoscaling_config`. `build_app` is the import path a serveConfigV2 names
(`import_path: stack.ray_serve.app:build_app`, `args:` as `RayAppConfig.from_args` reads them)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from dvd.config import DeviceConfig, GatewayConfig, LanguageConfig, VisionConfig
from stack.ray_serve.config import RayAppConfig
from stack.ray_serve.deployments import GatewayIngress, LanguageDeployment, VisionDeployment

APP_NAME = "dvd"
# What Serve's gRPC proxy needs to serve dvd.v1.Gateway (`grpc_options.grpc_servicer_functions`).
GATEWAY_SERVICER = "protos.v1.gateway_pb2_grpc.add_GatewayServicer_to_server"


def build(cfg: RayAppConfig) -> Application:
    device = DeviceConfig(device=cfg.device, dtype=cfg.dtype)
    vision_cfg = VisionConfig(model=cfg.model, host=cfg.vision_grpc_host, port=cfg.vision_grpc_port, device=device)
    language_cfg = LanguageConfig(model=cfg.model, device=device)
    # The targets only name the pools (Serve routes the calls); GatewayConfig wants them non-empty.
    gateway_cfg = GatewayConfig(vision_targets=("ray-serve:vision",), language_targets=("ray-serve:language",),
                                model_name=cfg.model_name, model_root=cfg.model)
    vision = VisionDeployment.options(**cfg.vision.serve_options()).bind(vision_cfg)
    language = LanguageDeployment.options(**cfg.language.serve_options()).bind(language_cfg)
    return GatewayIngress.options(**cfg.gateway.serve_options()).bind(gateway_cfg, vision, language)


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder: `serve run stack.ray_serve.app:build_app model=/models/x`."""
    return build(RayAppConfig.from_args(args))
