"""MITRE ATT&CK: the techniques flowwarden's detectors report, with their tactics, as data.

Every detector names one technique (``Detector.technique``); the tactic follows from it here,
so an alert's tactic is never set by hand and the exports (:mod:`flowwarden.alert_formats`)
need nothing from the pipeline. Names and ids are those of ATT&CK Enterprise (v15-v17, where
none of these moved); a sub-technique (``T1552.005``) keeps its parent's tactics.
"""

from __future__ import annotations

from typing import NamedTuple

ATTACK_URL = "https://attack.mitre.org"


class Tactic(NamedTuple):
    id: str  # TA0007
    name: str  # Discovery

    @property
    def reference(self) -> str:
        return f"{ATTACK_URL}/tactics/{self.id}/"


class Technique(NamedTuple):
    id: str  # T1046, or T1552.005 for a sub-technique
    name: str
    tactics: tuple[str, ...]  # tactic ids

    @property
    def reference(self) -> str:
        return f"{ATTACK_URL}/techniques/{self.id.replace('.', '/')}/"

    @property
    def parent(self) -> str:
        """The technique a sub-technique belongs to (itself when not a sub-technique)."""
        return self.id.split(".")[0]


TACTICS: dict[str, Tactic] = {
    t.id: t
    for t in (
        Tactic("TA0006", "Credential Access"),
        Tactic("TA0007", "Discovery"),
        Tactic("TA0008", "Lateral Movement"),
        Tactic("TA0010", "Exfiltration"),
        Tactic("TA0011", "Command and Control"),
    )
}

TECHNIQUES: dict[str, Technique] = {
    t.id: t
    for t in (
        Technique("T1018", "Remote System Discovery", ("TA0007",)),
        Technique("T1021", "Remote Services", ("TA0008",)),
        Technique("T1030", "Data Transfer Size Limits", ("TA0010",)),
        Technique("T1041", "Exfiltration Over C2 Channel", ("TA0010",)),
        Technique("T1046", "Network Service Discovery", ("TA0007",)),
        Technique("T1048", "Exfiltration Over Alternative Protocol", ("TA0010",)),
        Technique("T1071", "Application Layer Protocol", ("TA0011",)),
        Technique("T1071.004", "DNS", ("TA0011",)),
        Technique("T1110", "Brute Force", ("TA0006",)),
        Technique("T1552", "Unsecured Credentials", ("TA0006",)),
        Technique("T1552.005", "Cloud Instance Metadata API", ("TA0006",)),
        Technique("T1613", "Container and Resource Discovery", ("TA0007",)),
    )
}


def technique(technique_id: str) -> Technique | None:
    """The technique with this id (None when unknown or empty)."""
    return TECHNIQUES.get(technique_id)


def tactics_of(technique_id: str) -> list[Tactic]:
    """The tactics of a technique (empty when the technique is unknown)."""
    t = TECHNIQUES.get(technique_id)
    return [TACTICS[x] for x in t.tactics] if t else []


def tactic_name(technique_id: str) -> str:
    """The (first) tactic's name of a technique, "" when unknown: what an alert carries."""
    found = tactics_of(technique_id)
    return found[0].name if found else ""
