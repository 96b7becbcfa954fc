"""The detector interface and registry.

A detector looks at a table of closed entity-windows (keys, features, and the entity's and
its workload's baselines) and returns a score in [0, 1] per window: 0 means no finding.
Thresholds are class-level ``defaults``, each with its allowed range in ``constraints``
(scikit-learn's ``_parameter_constraints``), documented in each detector's docstring and
overridable per detector via ``settings.pipeline.detectors`` (``{"port_scan": {"min_ports": 30}}``):
:func:`resolve_params` checks an override's name and range and names the key path on error.
A detector registers itself with ``@DETECTORS.register("name")``; one that needs the anomaly
model sets ``needs_model`` and receives it through :meth:`Detector.set_model`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flowwarden.errors import ConfigError
from flowwarden.plugins import Interval, Registry, nearest
from flowwarden.records import AlertKind
from flowwarden.settings import Settings


@dataclass
class Context:
    """What every detector may read about one batch of closed windows."""

    windows: pd.DataFrame  # keys + features, one row per entity-window
    entity_base: pd.DataFrame  # baseline rows of the entity (NaN when unknown), aligned with windows
    workload_base: pd.DataFrame  # baseline rows of the workload, aligned with windows
    settings: Settings
    model: Any = None
    memory_since: float = float("-inf")  # when the engine's memory starts (-inf: imported history)
    extra: dict[str, Any] = field(default_factory=dict)

    def appeared_after_learning(self, age: np.ndarray, learn_s: float) -> np.ndarray:
        """Whether something first seen ``age`` seconds before each window appeared once the
        engine had ``learn_s`` seconds of memory (so "new" means new, not merely early)."""
        first = self.windows["window_start"].to_numpy(dtype="float64") - age
        return first >= self.memory_since + learn_s

    @property
    def workload_age(self) -> np.ndarray:
        """Seconds since the entity's workload was first seen (0 when new)."""
        first = self.workload_base["first"].to_numpy(dtype="float64")
        age = self.windows["window_start"].to_numpy(dtype="float64") - first
        return np.nan_to_num(age, nan=0.0)

    def learning(self, learn_s: float) -> np.ndarray:
        """Whether each window falls while the engine's memory or its workload is younger than
        ``learn_s``: a finding then may be the cluster's normal, not yet learned.

        A workload counts as new by its first *sourced* flow only while the inventory does not
        say its pod has run for longer (``extra["pod_age"]``; 0 when unknown): a database or a
        broker that never opened a connection and starts scanning is news, not a newcomer."""
        ws = self.windows["window_start"].to_numpy(dtype="float64")
        young = self.workload_age < learn_s
        pod_age = self.extra.get("pod_age")
        if pod_age is not None:
            young &= np.asarray(pod_age, dtype="float64") < learn_s
        return (ws < self.memory_since + learn_s) | young

    def zscore(self, feature: str, base: pd.DataFrame, min_dev: float = 0.5) -> np.ndarray:
        """Robust deviation of ``log1p(feature)`` from a baseline (0 when there is none)."""
        x = np.log1p(self.windows[feature].to_numpy(dtype="float64").clip(min=0))
        m = base[f"m_{feature}"].to_numpy(dtype="float64")
        d = base[f"d_{feature}"].to_numpy(dtype="float64")
        z = (x - m) / np.maximum(1.25 * np.nan_to_num(d), min_dev)
        return np.nan_to_num(z, nan=0.0)


def ratio_score(x: np.ndarray, threshold: float, floor: float = 0.5) -> np.ndarray:
    """``floor`` at the threshold, rising towards 1 as ``x`` grows; 0 below it."""
    x = np.asarray(x, dtype="float64")
    thr = max(threshold, 1e-9)
    s = 1.0 - (1.0 - floor) * thr / np.maximum(x, thr)
    return np.where(x >= thr, s, 0.0)


class Detector:
    """One kind of finding. Subclasses set the class attributes and implement :meth:`score`."""

    name: ClassVar[str] = ""
    kind: ClassVar[AlertKind] = "lateral_movement"
    technique: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    constraints: ClassVar[dict[str, Interval]] = {}  # the allowed range of every threshold
    evidence: ClassVar[tuple[str, ...]] = ()  # features shown against their baselines
    # True: the engine hands this detector the anomaly model (set_model, also on a promote)
    # and its alerts carry the model's version.
    needs_model: ClassVar[bool] = False
    # True: the evidence is conclusive before the window ends (a scan past its threshold, a
    # control-plane or metadata-API connection, a large upload to a new address), so the
    # engine also scores the still-open window when a batch brings rows of the kind in
    # :meth:`early_rows`, and the alert goes out seconds sooner. Window statistics
    # (baselines, the model, beaconing) need the whole window and stay False.
    early: ClassVar[bool] = False
    reads_novelty: ClassVar[bool] = False  # its score reads the seen-edges features (new_*, young_*)
    # Its findings rest on learned memory, so they are "learning" while that memory is young;
    # a declared rule (a policy, a feed) judges the same on the first day as on the hundredth.
    learns: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if set(cls.constraints) != set(cls.defaults):
            raise TypeError(f"{cls.__name__}: constraints must cover exactly the thresholds in defaults")
        for key, value in cls.defaults.items():
            if value not in cls.constraints[key]:
                raise TypeError(f"{cls.__name__}: default {key}={value} is not {cls.constraints[key]}")

    def __init__(self, params: Mapping[str, float] | None = None) -> None:
        self.params = resolve_params(type(self), params)

    def set_model(self, model: Any) -> None:
        """Receive the anomaly model (None: no model); called only when ``needs_model``."""
        raise TypeError(f"detector {self.name} does not take a model (needs_model is False)")

    @property
    def active(self) -> bool:
        return True

    def score(self, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def technique_for(self, kind: str) -> str:
        """The ATT&CK technique of an alert of this kind (one fixed technique for most detectors)."""
        return self.technique

    def kinds(self, ctx: Context, hit: np.ndarray) -> np.ndarray:
        """The alert kind of each hit (one fixed kind for most detectors)."""
        return np.full(int(hit.sum()), self.kind, dtype=object)

    def target_mask(self, flows: pd.DataFrame, ctx: Context) -> np.ndarray:
        """Which of an entity-window's flows are the evidence (their destinations are the targets)."""
        return np.ones(len(flows), dtype=bool)

    def early_min_rows(self) -> int:
        """How many :meth:`early_rows` an entity needs in a window before this detector could
        fire on it (a lower bound from the thresholds)."""
        return 1

    def early_rows(self, lean: pd.DataFrame) -> np.ndarray:
        """Rows of a new batch (lean flows) that could complete this detector's evidence in an
        open window; only their entities are scored early (it keeps early firing cheap)."""
        return np.zeros(len(lean), dtype=bool)

    def quiet_before(self, memory_since: float) -> float:
        """The window start before which this detector scores 0 whatever the flows, for an
        engine whose memory starts at ``memory_since`` (never decreasing as it does): early
        firing skips a pass no detector of which can score. ``-inf``: any window may score."""
        return -math.inf

    def describe(self, flows: pd.DataFrame) -> dict[str, Any]:
        """Extra evidence from the window's evidence flows (e.g. the tunnel's domain)."""
        return {}


HEAVY_SHARE = 0.10  # a destination is a target of an egress finding from this share of its bytes


def heavy_egress_mask(flows: pd.DataFrame, share: float = HEAVY_SHARE) -> np.ndarray:
    """Egress flows to the destinations that carry at least ``share`` of the window's bytes out.

    The targets of an exfiltration alert are what the enforcer may block: a pod uploading
    gigabytes to a new address also makes small calls to its usual SaaS APIs, and those
    must not become block targets.
    """
    egress = (flows["direction"] == "egress").to_numpy()
    if not egress.any():
        return egress
    out = flows["bytes_out"].where(egress, 0)
    per_dst = out.groupby(flows["dst_ip"]).transform("sum").to_numpy(dtype="float64")
    total = float(out.sum())
    return egress & (per_dst >= share * total) if total > 0 else egress


DETECTORS: Registry[type[Detector]] = Registry("detector", "pipeline.detectors")


def resolve_params(cls: type[Detector], overrides: Mapping[str, float] | None) -> dict[str, float]:
    """The detector's thresholds: its defaults with ``overrides`` checked by name and range.

    Raises :class:`ConfigError` naming the key path (``pipeline.detectors.port_scan.min_ports``),
    the nearest valid name or the allowed range, and the fix.
    """
    params = dict(cls.defaults)
    for key, value in (overrides or {}).items():
        path = f"pipeline.detectors.{cls.name}.{key}"
        if key not in cls.defaults:
            close = nearest(key, cls.defaults)
            hint = f"; did you mean 'pipeline.detectors.{cls.name}.{close}'?" if close else ""
            raise ConfigError(f"unknown key '{path}'{hint} (valid here: {', '.join(cls.defaults)})")
        allowed, default = cls.constraints[key], cls.defaults[key]
        if value not in allowed:
            shown = int(default) if float(default).is_integer() else default
            raise ConfigError(
                f"'{path}': must be {allowed} (got {value!r}); set it within that range, "
                f"or remove it for the default {shown}"
            )
        params[key] = float(value)
    return params
