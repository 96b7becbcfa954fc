"""Detectors: one module each, one interface (:mod:`pipeline.detectors.base`), one registry."""

from __future__ import annotations

from typing import Any

from flowwarden.errors import ConfigError
from flowwarden.pipeline.detection.detectors import (  # noqa: F401 - importing registers them
    beaconing,
    bulk_egress,
    control_plane_access,
    dns_tunnel,
    fan_out,
    ip_sweep,
    isolation_forest,
    metadata_api,
    new_destination_volume,
    port_scan,
)
from flowwarden.pipeline.detection.detectors.base import REGISTRY, Context, Detector
from flowwarden.settings import Settings

__all__ = ["REGISTRY", "Context", "Detector", "build_detectors"]


def build_detectors(settings: Settings, model: Any = None) -> list[Detector]:
    """Every enabled detector, with its thresholds from the settings."""
    p = settings.pipeline
    unknown = sorted((set(p.detectors) | set(p.disabled_detectors)) - set(REGISTRY))
    if unknown:
        raise ConfigError(
            f"pipeline.detectors: unknown detector(s) {', '.join(unknown)} "
            f"(valid: {', '.join(sorted(REGISTRY))})"
        )
    out: list[Detector] = []
    for name, cls in REGISTRY.items():
        if name in p.disabled_detectors:
            continue
        det = cls(p.detectors.get(name))
        if name == "isolation_forest":
            det.set_model(model)  # type: ignore[attr-defined]
        out.append(det)
    return out
