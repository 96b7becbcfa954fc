#!/usr/bin/env python3
"""Declared policy and threat feeds: what they cost the pipeline, and how long a feed refresh takes.

    .venv/bin/python benchmarks/bench_feeds.py            # 1,000 pods, 2 simulated minutes, 1,000,000 entries
    .venv/bin/python benchmarks/bench_feeds.py --quick    # 500 pods, 1 minute, 200,000 entries

Feeds the same simulated flows (every attack and hard negative included) to a fresh
:class:`DetectionEngine` twice, in batches of ``--batch-flows`` in time order: once with
nothing declared, once with a ``--rules``-rule policy and ``--entries`` feed entries (90 %
IPv4/IPv6 CIDRs and addresses, 10 % domain names) handed to ``policy_violation`` and
``threat_feed`` (the engine hands them each enriched batch). Prints flows/s of both and
the slowdown (the median over interleaved pairs of runs), then the refresh times: parse +
index from a file, a full download over loopback HTTP, and a conditional one (304). It
prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def feed_text(entries: int, seed: int) -> str:
    """A blocklist of ``entries`` lines: CIDRs and addresses (some IPv6), then domain names."""
    rng = random.Random(seed)
    n_names = entries // 10
    lines = ["# synthetic blocklist"]
    for _ in range(entries - n_names):
        if rng.random() < 0.05:
            lines.append(f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::/64")
            continue
        a = rng.choice([1, 5, 23, 31, 37, 45, 62, 77, 85, 91, 103, 141, 176, 185, 193, 212])
        ip = f"{a}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        lines.append(ip if rng.random() < 0.6 else f"{ip}/{rng.choice([24, 28, 29, 30])}")
    for i in range(n_names):
        lines.append(f"h{i}-{rng.randrange(10**6)}.bad{i % 997}.example")
    return "\n".join(lines) + "\n"


def policy_for(namespaces: list[str], rules: int, seed: int) -> dict[str, Any]:
    """``rules`` egress rules over the simulated namespaces: specific CIDRs, domains, ports,
    and per namespace one rule for the cluster and one for HTTPS anywhere, so most traffic is
    allowed (as in a cluster whose policy fits) and some is not."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    per = max(rules // max(len(namespaces), 1), 3)
    made = 0
    for ns in namespaces:
        if made >= rules:
            break
        egress: list[dict[str, Any]] = [
            {"name": "cluster", "to": {"namespaces": ["*"]}},
            {"name": "https", "to": {"cidrs": ["0.0.0.0/0"]}, "ports": ["443/tcp"]},
        ]
        if ns in ("monitoring", "kube-system"):  # node exporters and kubelets on every node
            egress.append(
                {"name": "nodes", "to": {"cidrs": ["10.0.0.0/16"]}, "ports": ["9100/tcp", "10250/tcp"]}
            )
        for j in range(min(per, rules - made) - 2):
            egress.append(
                {
                    "name": f"r{j}",
                    "to": {
                        "cidrs": [f"{rng.randrange(1, 223)}.{rng.randrange(256)}.0.0/16"],
                        "domains": [f"*.svc{j}.example.com", f"api{j}.example.org"],
                    },
                    "ports": [f"{rng.choice([80, 8080, 5432, 6379, 9092])}/tcp", "8000-8100/tcp"],
                }
            )
        made += len(egress)
        out[ns] = {"egress": egress}
    return {"namespaces": out}


def run_engine(
    settings: Any, inventory: Any, batches: list[Any], policy: Any, feeds: Any
) -> tuple[float, int, dict[str, float]]:
    """CPU seconds for the whole stream (observe + process + flush), alerts, and the rule parts' share."""
    from flowwarden.pipeline.detection.detectors import flow_rules
    from flowwarden.pipeline.detection.engine import DetectionEngine

    eng = DetectionEngine(settings, inventory=inventory)
    if policy is not None or feeds is not None:
        from flowwarden.policy import Policy

        eng.set_rules(policy or Policy(), "bench", feeds, "bench")
    parts: dict[str, float] = {}
    rule_dets = [d for d in eng.detectors if isinstance(d, flow_rules.FlowRuleDetector)]
    for d in rule_dets:
        for meth in ("observe", "score", "describe", "target_mask"):
            fn = getattr(d, meth)

            def wrapper(*a: Any, _fn: Any = fn, _key: str = f"{d.name}.{meth}", **k: Any) -> Any:
                t = time.process_time()
                try:
                    return _fn(*a, **k)
                finally:
                    parts[_key] = parts.get(_key, 0.0) + time.process_time() - t

            setattr(d, meth, wrapper)
    build = eng.alerts.build

    def timed_build(*a: Any, **k: Any) -> Any:
        t = time.process_time()
        try:
            return build(*a, **k)
        finally:
            parts["alert building (every detector)"] = (
                parts.get("alert building (every detector)", 0.0) + time.process_time() - t
            )

    eng.alerts.build = timed_build  # type: ignore[method-assign]
    alerts = 0
    t0 = time.process_time()
    for b in batches:  # the engine hands each enriched batch to the rule detectors
        alerts += len(eng.process(b).alerts)
    alerts += len(eng.flush().alerts)
    return time.process_time() - t0, alerts, parts


def serve(body: bytes) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/feed.txt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--batch-flows", type=int, default=50_000)
    ap.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="pairs of runs (nothing declared, then declared); the medians count",
    )
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="500 pods, 1 minute, 200,000 entries")
    args = ap.parse_args(argv)
    if args.quick:
        args.pods, args.minutes, args.entries, args.repeat = 500, 1.0, 200_000, 1

    from results import emit

    from flowwarden.feeds import FeedSet, parse_feed
    from flowwarden.feeds_fetch import FeedCache
    from flowwarden.kube import PodInventory
    from flowwarden.policy import parse_policy
    from flowwarden.records import conform_flows
    from flowwarden.settings import Settings
    from flowwarden.simulator import simulate

    settings = Settings()
    sim = simulate(minutes=args.minutes, pods=args.pods, seed=args.seed, attacks="all", settings=settings)
    flows = conform_flows(sim.flows).sort_values("ts_end", kind="stable").reset_index(drop=True)
    batches = [flows.iloc[i : i + args.batch_flows] for i in range(0, len(flows), args.batch_flows)]
    inventory = PodInventory.from_dict(sim.inventory)
    namespaces = sorted({p["metadata"]["namespace"] for p in sim.inventory["items"]})
    print(
        f"simulated {len(flows):,} flows ({args.pods} pods, {len(namespaces)} namespaces, "
        f"{args.minutes:g} min)"
    )

    text = feed_text(args.entries, args.seed)
    t = time.perf_counter()
    parsed = parse_feed("bench", text, "lines")
    t_parse = time.perf_counter() - t
    t = time.perf_counter()
    feeds = FeedSet([parsed], protected=settings.cluster.cluster_dns)
    t_index = time.perf_counter() - t
    policy = parse_policy(policy_for(namespaces, args.rules, args.seed))
    print(
        f"feed: {parsed.entries:,} entries ({parsed.rejected} rejected); policy: {policy.rule_count()} rules"
    )

    # Interleaved pairs (nothing declared, declared, nothing, declared, ...): a shared machine's
    # load then weighs on both variants alike; the slowdown is the median of the pairs'. Each run
    # starts from a full collection, so one left pending by the setup (the feed holds a million
    # entries: a full pass costs tens of ms) does not land on one variant by chance; those the
    # run's own allocations cause are counted.
    runs: dict[bool, list[tuple[float, int, dict[str, float]]]] = {False: [], True: []}
    run_engine(settings, inventory, batches, policy, feeds)  # warm-up: imports, first compile
    for _ in range(args.repeat):
        for declared in (False, True):
            gc.collect()
            runs[declared].append(
                run_engine(settings, inventory, batches, *((policy, feeds) if declared else (None, None)))
            )
    pairs = sorted((r1[0] / r0[0] - 1.0) * 100 for r0, r1 in zip(runs[False], runs[True], strict=True))

    def median_run(rs: list[tuple[float, int, dict[str, float]]]) -> tuple[float, int, dict[str, float]]:
        keys = {k for r in rs for k in r[2]}
        parts = {k: statistics.median(r[2].get(k, 0.0) for r in rs) for k in keys}
        return statistics.median(r[0] for r in rs), rs[0][1], parts

    base, ruled = median_run(runs[False]), median_run(runs[True])
    fps0, fps1 = len(flows) / base[0], len(flows) / ruled[0]
    slower = statistics.median(pairs)
    print(f"{'variant (one core, CPU time, median)':<34}{'flows/s':>12}{'alerts':>8}")
    print(f"{'nothing declared':<34}{fps0:>12,.0f}{base[1]:>8}")
    print(f"{'policy + feeds':<34}{fps1:>12,.0f}{ruled[1]:>8}")
    print(
        f"slowdown: {slower:+.1f} % (target: under 10 %), median of {len(pairs)} pairs "
        f"(from {pairs[0]:+.1f} to {pairs[-1]:+.1f} %); where the extra time went (medians):"
    )
    print("  pairs (%): " + " ".join(f"{x:+.1f}" for x in pairs))
    for key, sec in sorted(ruled[2].items(), key=lambda kv: -kv[1]):
        was = base[2].get(key, 0.0)
        extra = f" (nothing declared: {was:.3f}s)" if was else ""
        print(f"  {key:<36}{sec:>7.3f}s  {(sec - was) / base[0] * 100:5.1f} % of the base run{extra}")

    with tempfile.TemporaryDirectory() as tmp:
        httpd, url = serve(text.encode())
        try:
            s = Settings(
                rules={"feed_cache_dir": tmp, "feeds": [{"name": "bench", "url": url, "format": "lines"}]}
            )
            cache = FeedCache(s)
            t = time.perf_counter()
            full = cache.refresh_due(force=True)[0]
            t_full = time.perf_counter() - t
            t = time.perf_counter()
            cond = cache.refresh_due(now=time.time() + 10 * 86400)[0]
            t_cond = time.perf_counter() - t
        finally:
            httpd.shutdown()
            httpd.server_close()
    print(
        f"refresh: parse {t_parse:.2f}s + index {t_index:.2f}s; "
        f"full download+parse {t_full:.2f}s ({full.status}); "
        f"conditional {t_cond * 1000:.0f} ms ({cond.status})"
    )
    note = f"{args.entries:,} feed entries, {policy.rule_count()} rules, {args.pods} pods"
    emit("pipeline", "engine, nothing declared", fps0, "flows/s", note=note)
    emit("pipeline", "engine, policy + feeds", fps1, "flows/s", note=note)
    emit("pipeline", "policy + feeds slowdown", round(slower, 1), "%", note="target < 10 %")
    emit("feeds", "parse + index", round(t_parse + t_index, 2), "s", note=f"{args.entries:,} entries")
    emit("feeds", "full refresh over HTTP", round(t_full, 2), "s", note=f"{args.entries:,} entries")
    emit("feeds", "conditional refresh (304)", round(t_cond * 1000, 1), "ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
