"""The one pod inventory: pods with lifetimes, workloads from owner references, node addresses.

- :mod:`~flowwarden.kube.pods`: a pod's JSON to :class:`Pod` (:func:`parse_pod`, the only parser).
- :mod:`~flowwarden.kube.inventory`: :class:`PodInventory`, an immutable snapshot with
  enrichment's view (who owned an address at a time) and the guardrails' (who owns it now,
  how many live replicas a workload has).
- :mod:`~flowwarden.kube.source`: where snapshots come from, behind :class:`InventorySource`:
  a file (:class:`FileSource`), a watch on the API (:class:`~flowwarden.kube.watch.WatchSource`),
  or nothing (:class:`FixedSource`); :func:`inventory_source_from_settings` picks one.

Depends only on the base (settings, errors), so the pipeline and the enforcer share it
without importing each other.
"""

from flowwarden.kube.inventory import PodInventory, PodRef
from flowwarden.kube.pods import DELETED_AT, DELETION_GRACE_S, FINISHED_PHASES, Pod, parse_pod, workload_of
from flowwarden.kube.source import (
    FileSource,
    FixedSource,
    InventorySource,
    SourceStats,
    inventory_source_from_settings,
)

__all__ = [
    "DELETED_AT",
    "DELETION_GRACE_S",
    "FINISHED_PHASES",
    "FileSource",
    "FixedSource",
    "InventorySource",
    "Pod",
    "PodInventory",
    "PodRef",
    "SourceStats",
    "inventory_source_from_settings",
    "parse_pod",
    "workload_of",
]
