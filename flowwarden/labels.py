"""Ground truth for evaluation: labelled attack episodes.

The simulator writes ``labels.json`` in this format, and so can a person from their own
incident records. Evaluation matches alerts to episodes by source and time.

.. code-block:: json

    {"version": 1,
     "episodes": [{"id": "ep-001", "technique": "port_scan", "mitre": "T1046",
                   "kind": "lateral_movement",
                   "source": {"ip": "10.244.1.7", "namespace": "shop", "pod": "web-5d9c-x2",
                              "workload": "web"},
                   "targets": ["10.244.2.0/24"], "start": "2026-11-27T10:00:00Z",
                   "end": "2026-11-27T10:02:00Z", "intensity": 1.0}]}
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowwarden.errors import ConfigError
from flowwarden.records import AlertKind, Entity

LABELS_VERSION = 1

Technique = Literal[
    "port_scan",
    "ip_sweep",
    "fan_out",
    "control_plane_access",
    "metadata_api",
    "bulk_exfiltration",
    "slow_exfiltration",
    "dns_tunnel",
    "brute_force",
]
TECHNIQUES: tuple[str, ...] = Technique.__args__  # type: ignore[attr-defined]

TECHNIQUE_KIND: dict[str, AlertKind] = {
    "port_scan": "lateral_movement",
    "ip_sweep": "lateral_movement",
    "fan_out": "lateral_movement",
    "control_plane_access": "lateral_movement",
    "metadata_api": "lateral_movement",
    "bulk_exfiltration": "exfiltration",
    "slow_exfiltration": "exfiltration",
    "dns_tunnel": "exfiltration",
    "brute_force": "lateral_movement",
}

TECHNIQUE_MITRE: dict[str, str] = {
    "port_scan": "T1046",
    "ip_sweep": "T1018",
    "fan_out": "T1021",
    "control_plane_access": "T1613",
    "metadata_api": "T1552.005",
    "bulk_exfiltration": "T1048",
    "slow_exfiltration": "T1030",
    "dns_tunnel": "T1071.004",
    "brute_force": "T1110",
}


class Episode(BaseModel):
    """One attack, from ``start`` to ``end``, by ``source`` against ``targets``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    technique: Technique
    mitre: str = ""
    kind: AlertKind
    source: Entity
    targets: list[str] = Field(default_factory=list)  # IPs or CIDRs, or domains for dns_tunnel
    start: datetime
    end: datetime
    intensity: float = Field(1.0, gt=0)


class Labels(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = LABELS_VERSION
    episodes: list[Episode] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Labels:
        p = Path(path)
        try:
            return cls.model_validate(json.loads(p.read_text()))
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such labels file") from exc
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ConfigError(f"{p}: not a valid labels file: {exc}") from exc
