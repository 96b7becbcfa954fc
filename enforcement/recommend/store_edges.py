"""Observed edges of a time range from the store's per-minute rollups.

``flow_rollups`` keeps each (source, destination, port) per minute with namespace and
workload (or the address of no known pod), but not the protocol nor the pods' addresses:
an edge read here has protocol 0 (a rule allows TCP and UDP on its port) and workload
endpoints without an address (they are matched by namespace and labels). Rows rolled up
with port 0 (a port scan) name no port and never become a rule. The range is summed in SQL
a day at a time, so a long range reports progress and never holds its minutes in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from flowwarden.enforcement.recommend.evaluate import Endpoint
from flowwarden.enforcement.recommend.flows import Edge
from flowwarden.store_schema import flow_rollups

CHUNK = timedelta(days=1)
_KEY = (
    "src_namespace",
    "src_workload",
    "src_external",
    "dst_namespace",
    "dst_workload",
    "dst_external",
    "dst_port",
)


@dataclass
class _Sum:
    flows: int
    first: float
    last: float


def store_edges(
    engine: sa.Engine,
    since: datetime,
    until: datetime,
    labels: Mapping[tuple[str, str], dict[str, str]],
    on_progress: Callable[[str, float, float | None], None] | None = None,
) -> list[Edge]:
    """Edges with flows in ``[since, until)``; ``labels``: (namespace, workload) -> pod labels."""
    c = flow_rollups.c
    cols = [c[k] for k in _KEY]
    sums: dict[tuple[Any, ...], _Sum] = {}
    total = max((until - since) / CHUNK, 1.0)
    start, done = since, 0.0
    with engine.connect() as conn:
        while start < until:
            end = min(start + CHUNK, until)
            q = (
                sa.select(*cols, sa.func.sum(c.flows), sa.func.min(c.minute), sa.func.max(c.minute))
                .where(c.minute >= start, c.minute < end, c.flows > 0)
                .group_by(*cols)
            )
            for row in conn.execute(q):
                key, (flows, first, last) = tuple(row[: len(_KEY)]), row[len(_KEY) :]
                f, l_ = _ts(first), _ts(last) + 60.0
                s = sums.get(key)
                if s is None:
                    sums[key] = _Sum(int(flows), f, l_)
                else:
                    s.flows += int(flows)
                    s.first, s.last = min(s.first, f), max(s.last, l_)
            done += (end - start) / CHUNK
            if on_progress is not None:
                on_progress(f"{end:%Y-%m-%d %H:%M}: {len(sums)} edges", done, total)
            start = end
    edges = []
    for (sns, swl, sext, dns, dwl, dext, port), s in sorted(sums.items()):
        edges.append(
            Edge(
                _endpoint(sns, swl, sext, labels),
                _endpoint(dns, dwl, dext, labels),
                0,
                int(port),
                s.flows,
                s.first,
                s.last,
                "",
            )
        )
    return edges


def _ts(value: Any) -> float:
    """A minute as epoch seconds (SQLite may hand back naive UTC or text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def _endpoint(
    ns: str, workload: str, external: str, labels: Mapping[tuple[str, str], dict[str, str]]
) -> Endpoint:
    if not ns:
        return Endpoint(external)
    return Endpoint("", ns, workload, labels.get((ns, workload), {}))
