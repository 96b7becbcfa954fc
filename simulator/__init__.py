"""Labelled synthetic Kubernetes cluster traffic: benign, hard negatives, attacks.

``simulate(...)`` returns flows (``FLOW_SCHEMA``, as a collector sees them), the attack
episodes (``Labels``) and the pods (``kubectl get pods -A -o json``); ``iter_batches(...)``
yields the same flows as time-ordered batches for live replay.
"""

from flowwarden.simulator.generate import (
    DEFAULT_START,
    Simulation,
    iter_batches,
    resolve_techniques,
    simulate,
)

__all__ = ["DEFAULT_START", "Simulation", "iter_batches", "resolve_techniques", "simulate"]
