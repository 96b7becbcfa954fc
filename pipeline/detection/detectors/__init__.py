"""Detectors: one module each, one interface (:mod:`pipeline.detectors.base`), one registry.

Importing this package registers the built-in detectors on :data:`DETECTORS` (the plugin
mechanism every family shares, :mod:`flowwarden.plugins`), in the order they run.
"""

from __future__ import annotations

from typing import Any

from flowwarden.errors import ConfigError
from flowwarden.pipeline.detection.detectors import (  # noqa: F401 - importing registers them
    beaconing,
    brute_force,
    bulk_egress,
    control_plane_access,
    dns_tunnel,
    fan_out,
    ip_sweep,
    isolation_forest,
    metadata_api,
    new_destination_volume,
    policy_violation,
    port_scan,
    threat_feed,
    trust_boundary,
)
from flowwarden.pipeline.detection.detectors.base import (
    DETECTORS,
    Context,
    Detector,
    resolve_params,
)
from flowwarden.plugins import Registry
from flowwarden.settings import Settings

__all__ = ["DETECTORS", "Context", "Detector", "build_detectors", "check_detector_settings"]

MOVED = {"beaconing.min_conns": "pipeline.beacon_min_conns"}  # detector thresholds that became settings


def check_detector_settings(settings: Settings, registry: Registry[type[Detector]] = DETECTORS) -> None:
    """Every detector name and threshold in the settings against the registry.

    Checked: ``pipeline.detectors`` (names, parameter names and ranges),
    ``pipeline.disabled_detectors``, ``enforcement.detectors`` and
    ``enforcement.mode_by_detector``. The base settings cannot import the pipeline, so the
    engine runs this when it is built and the CLI right after loading the settings.
    Raises :class:`ConfigError` with the key path, the nearest valid name or the range.
    """
    p, e = settings.pipeline, settings.enforcement
    for name, overrides in p.detectors.items():
        cls = registry.get(name, where="pipeline.detectors")
        for key in overrides:
            moved = MOVED.get(f"{name}.{key}")
            if moved:
                raise ConfigError(f"'pipeline.detectors.{name}.{key}' is now the setting '{moved}'")
        resolve_params(cls, overrides)
    registry.check(p.disabled_detectors, "pipeline.disabled_detectors")
    registry.check(e.detectors, "enforcement.detectors")
    registry.check(e.mode_by_detector, "enforcement.mode_by_detector")


def build_detectors(
    settings: Settings, model: Any = None, *, registry: Registry[type[Detector]] = DETECTORS
) -> list[Detector]:
    """Every enabled detector, with its thresholds from the settings; ``model`` goes to
    the detectors that declare ``needs_model``."""
    check_detector_settings(settings, registry)
    p = settings.pipeline
    out: list[Detector] = []
    for name, cls in registry.items():
        if name in p.disabled_detectors:
            continue
        det = cls(p.detectors.get(name))
        if cls.needs_model:
            det.set_model(model)
        out.append(det)
    return out
