"""The compliance report as one self-contained HTML page (inline style, no script, no fetch).

An auditor opens it from a mail or a ticket, offline: everything is in the file, every value
from the report is escaped, and the sections follow :func:`flowwarden.compliance.build_report`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from flowwarden.compliance import Report

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#1d232a;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccd}
.meta{color:#556} .cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ccd;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:20px} .bad b{color:#b3261e} .ok b{color:#1b6e3a}
table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border:1px solid #dde;padding:3px 7px;text-align:left}
th{background:#f1f3f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
.no{color:#b3261e;font-weight:600} .yes{color:#1b6e3a} .empty{color:#556;font-style:italic}
"""


PLAIN = frozenset({"port"})  # numbers shown as they are written (no thousands separator)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return f'<td class="{"yes" if v else "no"}">{"yes" if v else "no"}</td>'
    if isinstance(v, int | float):
        return f'<td class="n">{v:,}</td>' if isinstance(v, int) else f'<td class="n">{v}</td>'
    if isinstance(v, list):
        return f"<td>{_e(', '.join(str(x) for x in v))}</td>"
    return f"<td>{_e(v)}</td>"


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>" + "".join(_cell(str(r[k]) if k in PLAIN else r.get(k, "")) for k, _ in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(label: str, value: Any, bad: bool | None = None) -> str:
    cls = "" if bad is None else (" bad" if bad else " ok")
    return f'<div class="card{cls}"><b>{_e(value)}</b>{_e(label)}</div>'


def render_html(report: Report) -> str:
    """The page for one report (deterministic for the same report)."""
    s = report["summary"]
    cards = "".join(
        [
            _card("namespaces", s["namespaces"]),
            _card(
                "without any policy", s["namespaces_without_policies"], bool(s["namespaces_without_policies"])
            ),
            _card(
                "control-plane / metadata edges",
                s["control_plane_or_metadata_edges"],
                s["control_plane_or_metadata_edges"] > 0,
            ),
            _card("egress destinations", s["egress_destinations"]),
            _card("alerts", s["alerts"]),
            _card("enforcement decisions", s["decisions"]),
        ]
    )
    sources = ", ".join(f"{k}: {v}" for k, v in report["sources"].items() if v) or "the store"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>flowwarden compliance report: {_e(report['cluster'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Compliance report: {_e(report['cluster'])}</h1>",
        f'<p class="meta">Flows from {_e(report["since"])} to {_e(report["until"])}; generated '
        f"{_e(report['generated_at'])} from {_e(sources)}.</p>",
        f'<div class="cards">{cards}</div>',
        "<h2 id=namespaces>Namespaces and their policies</h2>",
        "<p>A namespace is covered when the declared policy states its egress or ingress, or a "
        "NetworkPolicy is deployed in it.</p>",
        _table(
            report["namespaces"],
            [
                ("namespace", "namespace"),
                ("workloads", "workloads"),
                ("flows", "flows sent"),
                ("bytes", "bytes sent"),
                ("declared_policy", "declared policy"),
                ("deployed_policies", "NetworkPolicies"),
                ("covered", "covered"),
            ],
            "No namespace in the range.",
        ),
        "<h2 id=control-plane>Workloads reaching the control plane or the metadata API</h2>",
        _table(
            report["control_plane_access"],
            [
                ("namespace", "namespace"),
                ("workload", "workload"),
                ("target", "target"),
                ("address", "address"),
                ("port", "port"),
                ("flows", "flows"),
                ("first_seen", "first seen"),
                ("last_seen", "last seen"),
                ("allowed_namespace", "API-client namespace"),
            ],
            "No workload reached the control plane or the metadata API.",
        ),
        "<h2 id=egress>Egress destinations per namespace</h2>",
    ]
    if not report["egress"]:
        parts.append('<p class="empty">No traffic left the cluster.</p>')
    for ns, e in report["egress"].items():
        shown = len(e["top"])
        more = f" (the {shown} largest shown)" if shown < e["destinations"] else ""
        parts.append(f"<h3>{_e(ns)}: {e['destinations']} destinations{_e(more)}</h3>")
        parts.append(
            _table(
                e["top"],
                [
                    ("address", "address"),
                    ("port", "port"),
                    ("flows", "flows"),
                    ("bytes_out", "bytes out"),
                    ("workloads", "workloads"),
                ],
                "",
            )
        )
    parts += [
        "<h2 id=alerts>Alerts and their outcome</h2>",
        _table(
            report["alerts"],
            [
                ("first_seen", "first seen"),
                ("severity", "severity"),
                ("detector", "detector"),
                ("technique", "technique"),
                ("source", "source"),
                ("targets", "targets"),
                ("outcome", "outcome"),
                ("verdict", "verdict"),
                ("summary", "summary"),
            ],
            "No alert in the range.",
        ),
        "<h2 id=decisions>Blocks and other enforcement decisions</h2>",
        _table(
            report["decisions"],
            [
                ("created_at", "at"),
                ("action", "action"),
                ("status", "status"),
                ("mode", "mode"),
                ("backend", "backend"),
                ("source", "source"),
                ("targets", "targets"),
                ("guardrail", "guardrail"),
                ("reason", "reason"),
            ],
            "No enforcement decision in the range.",
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
