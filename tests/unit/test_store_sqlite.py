"""The store's contract, run on SQLite here and on PostgreSQL in tests/integration.

:class:`StoreContract` holds the test bodies; each dialect's test class supplies a started
``store`` with empty tables and a ``fresh_url`` with no schema at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwarden.dns_rollups import rollup_dns
from flowwarden.errors import ConfigError, RecordError, ServiceUnavailable
from flowwarden.migrations import MIGRATIONS, Migration, SchemaTooNew, applied_versions
from flowwarden.records import Alert, Decision, Entity, empty_flows
from flowwarden.rollups import rollup_flows
from flowwarden.store import (
    ROLLUP_COLUMNS,
    DuplicateBatch,
    Store,
    UnknownDecision,
    normalise_url,
)
from flowwarden.store_schema import metadata, schema_migrations

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
LATEST = MIGRATIONS[-1].version


def make_alert(i: int = 0, **update: object) -> Alert:
    entity = Entity(
        ip=f"10.244.1.{i % 250 + 1}", namespace="shop", pod=f"cart-{i}", workload="cart", node="n1"
    )
    alert = Alert(
        kind="exfiltration",
        detector="bulk_upload",
        technique="T1048",
        score=0.5,
        severity="medium",
        entity=entity,
        window_start=T0 + timedelta(seconds=10 * i),
        window_end=T0 + timedelta(seconds=10 * i + 10),
        targets=["203.0.113.7", "2001:db8::1"],
        target_ports=[443, 8443],
        summary="uploaded 2 GB to 203.0.113.7",
        evidence={"bytes_out": 2_000_000_000, "baseline": {"median": 1.5, "mad": 0.25}, "ports": [443]},
        example_flows=[{"src_ip": entity.ip, "dst_ip": "203.0.113.7", "bytes_out": 10, "final": True}],
        model_version="2026.03.01-1",
        created_at=T0 + timedelta(seconds=10 * i + 11),
    )
    return alert.model_copy(update=update) if update else alert


def make_decision(i: int = 0, **update: object) -> Decision:
    d = Decision(
        id=f"dec-{i}",
        alert_id=make_alert(i).id,
        action="block",
        source=make_alert(i).entity,
        targets=["203.0.113.7/32"],
        target_ports=[443],
        ttl_s=600,
        expires_at=T0 + timedelta(seconds=600),
        backend="nftables",
        mode="enforce",
        status="pending",
        decided_by="policy",
        detector="bulk_upload",
        backend_result={},
        created_at=T0 + timedelta(seconds=i),
    )
    return d.model_copy(update=update) if update else d


def make_flows() -> pd.DataFrame:
    """Six enriched flows over two minutes: internal, egress, a rejected one, an interim one."""
    df = empty_flows(6)
    df["ts_start"] = [0.0, 10.0, 20.0, 30.0, 61.0, 70.0]
    df["ts_end"] = [5.0, 15.0, 25.0, 59.9, 65.0, 120.0]
    df["node"] = "n1"
    df["src_ip"] = ["10.244.1.2"] * 4 + ["10.244.1.3", "10.244.1.2"]
    df["dst_ip"] = ["10.244.2.9", "10.244.2.9", "203.0.113.7", "10.244.2.9", "10.244.2.9", "203.0.113.7"]
    df["dst_port"] = [8080, 8080, 443, 22, 8080, 443]
    df["proto"] = 6
    df["bytes_out"] = [100, 200, 5000, 60, 10, 7]
    df["bytes_in"] = [1000, 2000, 50, 0, 20, 3]
    df["pkts_out"] = [2, 3, 10, 1, 1, 1]
    df["pkts_in"] = [2, 3, 5, 1, 1, 1]
    df["state"] = ["closed", "closed", "closed", "rejected", "closed", "established"]
    df["final"] = [True, True, True, True, True, False]
    df["first"] = [True, True, True, True, True, False]  # the interim one is a later record
    df["dns_queries"] = [0, 0, 0, 0, 4, 0]  # as if a DNS-over-TCP flow
    df["dns_nxdomain"] = [0, 0, 0, 0, 1, 0]
    df["direction"] = ["internal", "internal", "egress", "internal", "internal", "egress"]
    df["src_namespace"] = "shop"
    df["src_pod"] = ["cart-1"] * 4 + ["cart-2", "cart-1"]
    df["src_workload"] = "cart"
    df["dst_namespace"] = ["shop", "shop", "", "shop", "shop", ""]
    df["dst_pod"] = ["db-0", "db-0", "", "db-0", "db-0", ""]
    df["dst_workload"] = ["db", "db", "", "db", "db", ""]
    return df


def make_dns_flows() -> pd.DataFrame:
    """DNS records of one minute: a pod's ordinary lookups, a tunnel in two records, a node's query."""
    df = empty_flows(4)
    df["ts_end"] = [5.0, 20.0, 40.0, 50.0]
    df["node"] = "n1"
    df["src_ip"] = ["10.244.1.2", "10.244.1.2", "10.244.1.2", "10.0.0.5"]
    df["dst_ip"] = "10.96.0.10"
    df["dst_port"] = 53
    df["proto"] = 17
    df["pkts_in"] = [3, 200, 390, 0]
    df["dns_queries"] = [3, 200, 400, 1]
    df["dns_names"] = [2, 200, 400, 1]
    df["dns_nxdomain"] = [1, 0, 0, 0]
    df["dns_name_max_len"] = [20, 60, 63, 12]
    df["dns_label_entropy"] = [2.0, 4.0, 4.5, 2.5]
    df["dns_top_domain"] = ["example.com", "t.example.org", "t.example.org", ""]
    df["dns_qname"] = ["api.example.com", "a1.t.example.org", "b2.t.example.org", "Repo.Example.NET."]
    df["dns_rtt_n"] = [3, 200, 390, 0]
    df["dns_rtt_mean_ms"] = [1.0, 2.0, 3.0, 0.0]
    df["dns_rtt_max_ms"] = [1.5, 25.0, 40.0, 0.0]
    df["src_namespace"] = ["shop", "shop", "shop", ""]
    df["src_pod"] = ["cart-1", "cart-1", "cart-1", ""]
    df["src_workload"] = ["cart", "cart", "cart", ""]
    return df


class StoreContract:
    """Behaviour every dialect must show. Subclasses provide ``store`` and ``fresh_url``."""

    # ---- schema and migrations

    def test_start_is_idempotent_and_records_each_migration_once(self, store: Store) -> None:
        assert store.schema_version() == LATEST
        with Store(store.url) as again:
            assert again.schema_version() == LATEST
        with store.engine.connect() as conn:
            assert applied_versions(conn) == [m.version for m in MIGRATIONS]

    def test_tables_match_their_definitions(self, store: Store) -> None:
        inspector = sa.inspect(store.engine)
        for table in metadata.sorted_tables:
            stored = {c["name"] for c in inspector.get_columns(table.name)}
            assert stored == set(table.columns.keys()), table.name

    def test_upgrade_applies_only_missing_migrations_in_one_transaction(self, fresh_url: str) -> None:
        calls: list[int] = []

        def add_probe(conn: sa.Connection) -> None:
            calls.append(2)
            conn.execute(sa.text("CREATE TABLE probe_v2 (x INTEGER)"))

        def broken(conn: sa.Connection) -> None:
            conn.execute(sa.text("CREATE TABLE probe_v3 (x INTEGER)"))
            raise RuntimeError("migration 3 fails half way")

        v1 = MIGRATIONS[:1]
        with Store(fresh_url, migrations=v1) as s:
            assert s.schema_version() == 1
        v2 = (*v1, Migration(2, "probe", add_probe))
        with Store(fresh_url, migrations=v2) as s:
            assert s.schema_version() == 2
        with Store(fresh_url, migrations=v2) as s:
            assert s.schema_version() == 2
        assert calls == [2]
        with pytest.raises(RuntimeError, match="half way"):
            Store(fresh_url, migrations=(*v2, Migration(3, "broken", broken))).start()
        with Store(fresh_url, migrations=v2) as s:
            assert s.schema_version() == 2
            assert not sa.inspect(s.engine).has_table("probe_v3")  # the DDL was rolled back too
            assert sa.inspect(s.engine).has_table("probe_v2")

    def test_rollups_of_a_version_2_database_gain_the_dns_measures(self, fresh_url: str) -> None:
        with Store(fresh_url, migrations=MIGRATIONS[:2]) as old:
            old.add_rollups(rollup_flows(make_flows()))
            rows = len(old.list_rollups())
            with old.transaction() as conn:  # the table as version 2 made it
                for col in ("dns_queries", "dns_nxdomain"):
                    conn.execute(sa.text(f"ALTER TABLE flow_rollups DROP COLUMN {col}"))
        with Store(fresh_url) as s:
            assert s.schema_version() == LATEST
            got = s.list_rollups()
            assert len(got) == rows and (got["dns_queries"] == 0).all() and (got["dns_nxdomain"] == 0).all()
            s.add_rollups(rollup_flows(make_flows()))  # and the new measures add up from now on
            assert int(s.list_rollups()["dns_queries"].sum()) == 4

    def test_the_service_edges_view_names_workloads_and_addresses_of_no_pod(self, fresh_url: str) -> None:
        with Store(fresh_url, migrations=MIGRATIONS[:3]) as old:
            old.add_rollups(rollup_flows(make_flows()))
            with old.transaction() as conn:  # the store as version 3 made it
                conn.execute(sa.text("DROP VIEW service_edges"))
            assert not sa.inspect(old.engine).get_view_names()
        with Store(fresh_url) as s:  # migration 5 adds the view to a version-3 store
            assert sa.inspect(s.engine).get_view_names() == ["service_edges"]
            with s.engine.connect() as conn:
                query = "SELECT source, target, target_kind, flows FROM service_edges"
                rows = conn.execute(sa.text(query)).all()
            rollups = s.list_rollups()
            assert len(rows) == len(rollups) > 0
            assert {r.target_kind for r in rows} <= {"workload", "address"}
            ext = rollups[rollups["dst_namespace"] == ""]["dst_external"]
            assert set(ext) <= {r.target for r in rows if r.target_kind == "address"}

    def test_a_version_5_store_gains_the_dns_rollups(self, fresh_url: str) -> None:
        with Store(fresh_url, migrations=MIGRATIONS[:5]) as old, old.transaction() as conn:
            conn.execute(sa.text("DROP TABLE dns_rollups"))  # the store as version 5 made it
        with Store(fresh_url) as s:
            assert s.schema_version() == LATEST
            assert s.add_dns_rollups(rollup_dns(make_dns_flows())) > 0
            assert int(s.list_dns_rollups()["queries"].sum()) == int(make_dns_flows()["dns_queries"].sum())

    def test_concurrent_first_starts_migrate_once(self, fresh_url: str) -> None:
        errors: list[BaseException] = []
        barrier = threading.Barrier(3, timeout=10)

        def start() -> None:
            try:
                barrier.wait()
                Store(fresh_url).start().stop()
            except BaseException as exc:  # reported below, with the others
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "store start-ups did not finish within 60 s"
        assert errors == []
        with Store(fresh_url) as s, s.engine.connect() as conn:
            assert applied_versions(conn) == [m.version for m in MIGRATIONS]

    def test_a_newer_schema_is_refused(self, store: Store) -> None:
        with store.transaction() as conn:
            conn.execute(
                sa.insert(schema_migrations).values(version=LATEST + 7, name="future", applied_at=T0)
            )
        try:
            with pytest.raises(SchemaTooNew, match=f"version {LATEST + 7}.*upgrade flowwarden"):
                Store(store.url).start()
        finally:
            with store.transaction() as conn:
                conn.execute(sa.delete(schema_migrations).where(schema_migrations.c.version == LATEST + 7))

    # ---- alerts

    def test_alert_round_trips_exactly(self, store: Store) -> None:
        alert = make_alert(3)
        store.upsert_alerts([alert])
        got = store.get_alert(alert.id)
        assert got == alert
        assert got is not None and got.window_start.tzinfo is not None
        assert got.window_start.utcoffset() == timedelta(0)

    def test_alert_upsert_is_idempotent(self, store: Store) -> None:
        batch = [make_alert(i) for i in range(50)]
        assert store.upsert_alerts(batch) == 50
        assert store.upsert_alerts(batch) == 50
        stored = store.list_alerts()
        assert [a.id for a in stored] == [a.id for a in batch]
        assert stored == batch

    def test_alert_update_keeps_max_score_and_extends_the_span(self, store: Store) -> None:
        first = make_alert(1, score=0.9, severity="high")
        later = make_alert(
            1,
            score=0.6,
            severity="medium",
            window_end=first.window_end + timedelta(seconds=30),
            last_seen=first.window_end + timedelta(seconds=30),
            targets=["203.0.113.7", "203.0.113.8"],
            summary="still uploading",
        )
        assert later.id == first.id
        store.upsert_alerts([first])
        store.upsert_alerts([later])
        got = store.get_alert(first.id)
        assert got is not None
        assert got.score == 0.9 and got.severity == "high"
        assert got.window_end == later.window_end and got.last_seen == later.last_seen
        assert got.first_seen == first.first_seen
        assert got.targets == ["203.0.113.7", "203.0.113.8"] and got.summary == "still uploading"
        # An older, stale version arriving late changes nothing but can still raise the score.
        store.upsert_alerts([first.model_copy(update={"score": 0.95, "summary": "stale"})])
        got = store.get_alert(first.id)
        assert got is not None and got.score == 0.95 and got.summary == "still uploading"
        assert len(store.list_alerts()) == 1

    def test_versions_of_one_alert_in_one_call_are_merged(self, store: Store) -> None:
        a = make_alert(2, score=0.4)
        b = make_alert(2, score=0.8, severity="critical", last_seen=a.window_end + timedelta(seconds=5))
        assert store.upsert_alerts([a, b, a]) == 1
        got = store.get_alert(a.id)
        assert got is not None and got.score == 0.8 and got.severity == "critical"
        assert got.last_seen == b.last_seen

    def test_list_alerts_filters(self, store: Store) -> None:
        store.upsert_alerts([make_alert(i) for i in range(5)])
        store.upsert_alerts([make_alert(9, kind="lateral_movement", detector="port_scan")])
        assert len(store.list_alerts(since=T0 + timedelta(seconds=30))) == 3  # windows 30, 40, 90
        assert [a.detector for a in store.list_alerts(kind="lateral_movement")] == ["port_scan"]
        assert len(store.list_alerts(detector="bulk_upload", limit=3)) == 3

    def test_non_finite_evidence_is_stored_as_null(self, store: Store) -> None:
        alert = make_alert(4, evidence={"ratio": float("nan"), "n": 3})
        store.upsert_alerts([alert])
        got = store.get_alert(alert.id)
        assert got is not None and got.evidence == {"ratio": None, "n": 3}

    def test_nul_characters_are_replaced_not_refused(self, store: Store) -> None:
        alert = make_alert(6, summary="dns a\x00b", evidence={"q\x00": ["x\x00y"]})
        store.upsert_alerts([alert])
        got = store.get_alert(alert.id)
        assert got is not None
        assert (got.summary, got.evidence) == ("dns a\ufffdb", {"q\ufffd": ["x\ufffdy"]})
        store.add_rollups(rollup_flows(make_flows().assign(node="n\x001")))
        assert set(store.list_rollups()["node"]) == {"n\ufffd1"}

    def test_unstorable_evidence_names_the_field(self, store: Store) -> None:
        with pytest.raises(RecordError, match="evidence"):
            store.upsert_alerts([make_alert(5, evidence={"x": object()})])
        assert store.list_alerts() == []

    # ---- decisions

    def test_decision_lifecycle(self, store: Store) -> None:
        d = make_decision(1)
        assert store.insert_decisions([d]) == 1
        assert store.insert_decisions([d]) == 0  # a replayed decision is not duplicated
        assert store.get_decision(d.id) == d
        assert store.active_blocks(T0) == []

        applied = store.update_decision(
            d.id, status="applied", backend_result={"nftables": "ok", "handle": 7}
        )
        assert applied.status == "applied" and applied.backend_result == {"nftables": "ok", "handle": 7}
        assert store.get_decision(d.id) == applied
        assert [b.id for b in store.active_blocks(T0 + timedelta(seconds=10))] == [d.id]
        assert store.active_blocks(T0 + timedelta(seconds=601)) == []  # expired by TTL
        assert store.count_blocks_since(T0) == 1
        assert store.count_blocks_since(T0 + timedelta(seconds=5)) == 0

        revoked = store.update_decision(d.id, status="revoked", reason="operator lifted it")
        assert revoked.reason == "operator lifted it" and revoked.backend_result == applied.backend_result
        assert store.active_blocks(T0 + timedelta(seconds=10)) == []
        assert store.count_blocks_since(T0) == 1  # it was in place: still counts for rate limits
        assert [x.status for x in store.list_decisions(status="revoked")] == ["revoked"]

    def test_decisions_without_expiry_and_listing(self, store: Store) -> None:
        store.insert_decisions(
            [
                make_decision(1, status="applied", expires_at=None, ttl_s=0),
                make_decision(2, status="refused", guardrail="protected_ip"),
                make_decision(3, status="simulated", mode="dry_run"),
                make_decision(4, status="applied", action="unblock"),
            ]
        )
        assert [b.id for b in store.active_blocks(T0 + timedelta(days=365))] == ["dec-1"]
        assert [x.id for x in store.list_decisions(status=["refused", "simulated"])] == ["dec-2", "dec-3"]
        assert [x.id for x in store.list_decisions(since=T0 + timedelta(seconds=3))] == ["dec-3", "dec-4"]
        assert [x.guardrail for x in store.list_decisions(status="refused")] == ["protected_ip"]
        assert len(store.list_decisions(alert_id=make_alert(2).id)) == 1

    def test_decision_update_errors_change_nothing(self, store: Store) -> None:
        d = make_decision(1)
        store.insert_decisions([d])
        with pytest.raises(UnknownDecision, match="dec-404"):
            store.update_decision("dec-404", status="applied")
        with pytest.raises(RecordError, match="status"):
            store.update_decision(d.id, status="exploded")
        assert store.get_decision(d.id) == d

    # ---- rollups

    def test_rollups_are_additive(self, store: Store) -> None:
        flows = make_flows()
        whole = rollup_flows(flows)
        assert (
            store.add_rollups(rollup_flows(flows.iloc[:3])) + store.add_rollups(rollup_flows(flows.iloc[3:]))
            > 0
        )
        stored = store.list_rollups()
        pd.testing.assert_frame_equal(stored, _sorted(whole))
        store.add_rollups(whole)
        doubled = store.list_rollups()
        measures = ["bytes", "bytes_out", "bytes_in", "packets", "flows", "rejected"]
        pd.testing.assert_frame_equal(doubled[measures], stored[measures] * 2)
        assert (doubled["minute"].dt.tz is not None) and str(doubled["minute"].dt.tz) == "UTC"

    def test_rollup_window_and_rejects(self, store: Store) -> None:
        store.add_rollups(rollup_flows(make_flows()))
        first = store.list_rollups(until=datetime(1970, 1, 1, 0, 1, tzinfo=UTC))
        assert int(first["bytes"].sum()) == 1100 + 2200 + 5050 + 60
        assert int(first["rejected"].sum()) == 1
        assert len(store.list_rollups(since=datetime(1970, 1, 1, 0, 1, tzinfo=UTC))) == 2

    def test_prune_rollups(self, store: Store) -> None:
        store.add_rollups(rollup_flows(make_flows()))
        assert store.prune_rollups(datetime(1970, 1, 1, 0, 1, tzinfo=UTC)) == 3
        assert len(store.list_rollups()) == 2

    def test_dns_rollups_add_up_and_keep_the_longest_name(self, store: Store) -> None:
        flows = make_dns_flows()
        whole = rollup_dns(flows)
        store.add_dns_rollups(rollup_dns(flows.iloc[:2]))
        store.add_dns_rollups(rollup_dns(flows.iloc[2:]))
        stored = store.list_dns_rollups()
        dims = ["minute", "src_namespace", "src_workload", "src_external", "domain"]
        expected = whole.sort_values(dims).reset_index(drop=True)
        pd.testing.assert_frame_equal(stored.sort_values(dims).reset_index(drop=True), expected)
        tunnel = stored[stored["domain"] == "t.example.org"]
        assert tunnel["max_name_len"].tolist() == [63] and tunnel["queries"].tolist() == [600]
        store.add_dns_rollups(whole)  # sums double, the longest name stays the longest
        again = store.list_dns_rollups().sort_values(dims).reset_index(drop=True)
        assert (again["queries"] == expected["queries"] * 2).all()
        assert (again["max_name_len"] == expected["max_name_len"]).all()
        assert store.prune_rollups(datetime(1970, 1, 1, 0, 1, tzinfo=UTC)) == len(stored)
        assert store.list_dns_rollups().empty

    def test_bad_rollups_name_the_field(self, store: Store) -> None:
        rows = rollup_flows(make_flows())
        with pytest.raises(RecordError, match="bytes_out"):
            store.add_rollups(rows.drop(columns=["bytes_out"]))
        with pytest.raises(RecordError, match="packets: negative"):
            store.add_rollups(rows.assign(packets=-1))
        assert store.list_rollups().empty

    # ---- checkpoints

    def test_state_checkpoints(self, store: Store) -> None:
        assert store.get_state("baselines") is None
        store.put_state("baselines", b"\x00v1")
        store.put_state("baselines", b"\x00v2" * 1000)
        store.put_state("edges", b"")
        assert store.get_state("baselines") == b"\x00v2" * 1000
        assert store.get_state("edges") == b""
        assert store.delete_state("edges") and store.get_state("edges") is None
        with pytest.raises(RecordError, match="value"):
            store.put_state("x", "not bytes")  # type: ignore[arg-type]

    def test_a_newer_claim_fences_the_older_claimant(self, store: Store) -> None:
        """A partition's state is saved only by the worker that claimed the partition last."""
        from flowwarden.pipeline.runtime.sinks import StoreSink

        sink = StoreSink(store, "g")
        key = "pipeline/g/partitions/flows-by-workload/3"
        stale = sink.claim_state(key)
        assert sink.save_state(key, b"old owner", b"{}", claim=stale)
        successor = sink.claim_state(key)
        assert successor == stale + 1 and store.holds_claim(key + "/owner", successor)
        assert not store.holds_claim(key + "/owner", stale)
        assert sink.save_state(key, b"new owner", b"{}", claim=successor)
        # The stalled worker wakes up and checkpoints: refused, the successor's state stays.
        assert not sink.save_state(key, b"stale", b"{stale}", claim=stale)
        assert sink.load_state(key) == b"new owner" and sink.load_state(key + "/offsets") == b"{}"
        assert sink.save_state(key, b"unclaimed", None)  # no claim: the one-engine worker's save
        store.put_state(key + "/owner", b"garbage")
        assert sink.claim_state(key) == 1  # an unreadable claim starts again, it does not fail

    # ---- exactly-once bookkeeping

    def test_batch_effects_and_mark_commit_together(self, store: Store) -> None:
        batch = [("flows", 3, 41), ("flows", 3, 42)]
        rows = rollup_flows(make_flows())
        with pytest.raises(RuntimeError), store.transaction() as conn:
            store.add_rollups(rows, conn=conn)
            store.upsert_alerts([make_alert(1)], conn=conn)
            store.mark_batches("pipe", batch, conn=conn)
            raise RuntimeError("killed before commit")
        assert store.list_rollups().empty and store.list_alerts() == []
        assert store.seen_batches("pipe", batch) == set()

        with store.transaction() as conn:
            assert store.seen_batches("pipe", batch, conn=conn) == set()
            store.add_rollups(rows, conn=conn)
            store.upsert_alerts([make_alert(1)], conn=conn)
            store.mark_batches("pipe", batch, conn=conn)
        assert store.seen_batches("pipe", [*batch, ("flows", 3, 43)]) == set(batch)
        assert store.seen_batches("other-group", batch) == set()
        assert store.committed_offsets("pipe") == {("flows", 3): 42}

        # A replay that does not check first is refused, and its effects roll back.
        with pytest.raises(DuplicateBatch, match=r"flows\[3\]@42"), store.transaction() as conn:
            store.add_rollups(rows, conn=conn)
            store.mark_batches("pipe", [("flows", 3, 42)], conn=conn)
        pd.testing.assert_frame_equal(store.list_rollups(), _sorted(rows))
        assert len(store.list_alerts()) == 1

    def test_concurrent_marks_of_one_batch_let_exactly_one_win(self, store: Store) -> None:
        outcomes: list[str] = []
        barrier = threading.Barrier(2, timeout=10)

        def worker() -> None:
            barrier.wait()
            try:
                with store.transaction() as conn:
                    store.add_rollups(rollup_flows(make_flows()), conn=conn)
                    store.mark_batches("race", [("flows", 0, 7)], conn=conn)
                outcomes.append("won")
            except DuplicateBatch:
                outcomes.append("duplicate")
            except sa.exc.DBAPIError as exc:  # a serialisation conflict also counts as refused
                outcomes.append(f"db: {type(exc.orig).__name__}")

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "mark threads did not finish within 30 s"
        assert outcomes.count("won") == 1, outcomes
        pd.testing.assert_frame_equal(store.list_rollups(), _sorted(rollup_flows(make_flows())))

    def test_reads_neither_wait_for_nor_see_an_open_write(self, store: Store) -> None:
        store.upsert_alerts([make_alert(1)])
        with store.transaction() as conn:
            store.upsert_alerts([make_alert(2)], conn=conn)
            assert [a.id for a in store.list_alerts()] == [make_alert(1).id]
        assert len(store.list_alerts()) == 2

    def test_prune_batches(self, store: Store) -> None:
        store.mark_batches("pipe", [("flows", 0, i) for i in range(5)])
        assert store.prune_batches(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert store.prune_batches(datetime.now(UTC) + timedelta(seconds=1)) == 5
        assert store.committed_offsets("pipe") == {}

    # ---- timestamps and model events

    def test_naive_and_epoch_timestamps_are_utc(self, store: Store) -> None:
        naive = make_decision(5, status="applied", expires_at=None)
        store.insert_decisions([naive.model_copy(update={"created_at": T0.replace(tzinfo=None)})])
        got = store.get_decision("dec-5")
        assert got is not None and got.created_at == T0 and got.created_at.tzinfo is not None
        store.record_model_event("v7", "promote", at=T0)
        store.record_model_event("v6", "rollback", at=T0 + timedelta(minutes=1), detail="precision dropped")
        events = store.list_model_events()
        assert [(e["version"], e["event"]) for e in events] == [("v7", "promote"), ("v6", "rollback")]
        assert events[0]["at"] == T0
        with pytest.raises(RecordError, match="event"):
            store.record_model_event("v8", "deleted")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    dims = list(ROLLUP_COLUMNS[:10])
    return df.sort_values(dims).reset_index(drop=True)


class TestStoreSQLite(StoreContract):
    @pytest.fixture
    def store(self, sqlite_store: Store) -> Store:
        return sqlite_store

    @pytest.fixture
    def fresh_url(self, tmp_path: Path) -> Iterator[str]:
        yield f"sqlite:///{tmp_path / 'fresh.db'}"


# --------------------------------------------------------------------------- pure parts


def test_rollup_flows_aggregates_by_minute_and_peer() -> None:
    out = rollup_flows(make_flows())
    assert list(out.columns) == list(ROLLUP_COLUMNS)
    assert not out.duplicated(list(ROLLUP_COLUMNS[:10])).any()
    by_key = out.set_index(["src_workload", "dst_workload", "dst_external", "dst_port"]).sort_index()
    first_minute = out[out["minute"] == pd.Timestamp(0, tz="UTC")]
    row = first_minute[(first_minute["dst_workload"] == "db") & (first_minute["dst_port"] == 8080)].iloc[0]
    assert (row["bytes"], row["packets"], row["flows"], row["rejected"]) == (3300, 10, 2, 0)
    egress = out[out["dst_external"] == "203.0.113.7"]
    assert set(egress["direction"]) == {"egress"} and set(egress["dst_namespace"]) == {""}
    # The interim record at 120 s (not its flow's first) adds bytes in minute 2 but no flow.
    late = egress[egress["minute"] == pd.Timestamp(120, unit="s", tz="UTC")].iloc[0]
    assert (late["bytes"], late["flows"]) == (10, 0)
    assert int(by_key["rejected"].sum()) == 1
    assert int(out["bytes"].sum()) == int((make_flows()["bytes_out"] + make_flows()["bytes_in"]).sum())
    assert (int(out["dns_queries"].sum()), int(out["dns_nxdomain"].sum())) == (4, 1)


def test_rollup_flows_folds_port_scans_into_port_zero() -> None:
    df = empty_flows(200)
    df["ts_start"] = 0.0
    df["ts_end"] = 1.0
    df["src_ip"] = "10.244.1.2"
    df["dst_ip"] = "10.244.2.9"
    df["dst_port"] = range(1, 201)
    df["pkts_out"] = 1
    df["state"] = "rejected"
    df["src_namespace"] = "shop"
    df["src_workload"] = "cart"
    df["dst_namespace"] = "shop"
    df["dst_workload"] = "db"
    df["direction"] = "internal"
    out = rollup_flows(df, max_ports_per_peer=20)
    assert len(out) == 1
    assert (int(out["dst_port"].iloc[0]), int(out["flows"].iloc[0]), int(out["rejected"].iloc[0])) == (
        0,
        200,
        200,
    )
    assert len(rollup_flows(df, max_ports_per_peer=500)) == 200


def test_rollup_flows_needs_enriched_columns() -> None:
    with pytest.raises(RecordError, match="src_workload"):
        rollup_flows(make_flows().drop(columns=["src_workload"]))
    assert rollup_flows(empty_flows(0)).empty


def test_urls_are_normalised_and_checked(tmp_path: Path) -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match=r"store\.url"):
        Store("mysql://u@h/db")
    missing = Store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")  # no I/O yet
    with pytest.raises(ConfigError, match="does not exist"):
        missing.start()


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "flowwarden.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ServiceUnavailable, match=r"flowwarden\.db is not reachable: file is not a database"):
        Store(f"sqlite:///{garbage}").start()


def test_in_memory_sqlite_and_lifecycle() -> None:
    store = Store("sqlite://")
    with pytest.raises(Exception, match="not started"):
        _ = store.engine
    with store:
        store.put_state("k", b"v")
        assert store.get_state("k") == b"v"
    store.stop()  # idempotent


# --------------------------------------------------------------------------- properties

# NUL is excluded: PostgreSQL cannot store it, the store turns it into U+FFFD (tested apart).
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
_ips = st.ip_addresses().map(str)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    start = draw(_times)
    return Alert(
        kind=draw(st.sampled_from(["exfiltration", "lateral_movement"])),
        detector=draw(st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True)),
        technique=draw(_text),
        score=draw(st.floats(0, 1)),
        severity=draw(st.sampled_from(["low", "medium", "high", "critical"])),
        entity=Entity(
            ip=draw(_ips), namespace=draw(_text), pod=draw(_text), workload=draw(_text), node=draw(_text)
        ),
        window_start=start,
        window_end=start + draw(st.timedeltas(timedelta(0), timedelta(days=1))),
        targets=draw(st.lists(_ips, max_size=4)),
        target_ports=draw(st.lists(st.integers(0, 65535), max_size=4)),
        summary=draw(_text),
        evidence=draw(st.dictionaries(_text, _json, max_size=4)),
        example_flows=draw(st.lists(st.dictionaries(_text, _json, max_size=3), max_size=2)),
        model_version=draw(_text),
        created_at=draw(_times),
    )


@settings(max_examples=60, deadline=None)
@given(alert=alerts())
def test_any_alert_round_trips(alert: Alert) -> None:
    with Store("sqlite://") as store:
        store.upsert_alerts([alert])
        assert store.get_alert(alert.id) == alert


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(0, 200), seed=st.integers(0, 2**16))
def test_rollups_of_parts_add_up_to_the_rollup_of_the_whole(cut: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    flows = empty_flows(200)
    flows["ts_start"] = rng.uniform(0, 300, 200)
    flows["ts_end"] = flows["ts_start"] + rng.uniform(0, 5, 200)
    flows["src_ip"] = "10.244.1.2"
    flows["dst_ip"] = pd.Series(rng.choice(["10.244.2.9", "203.0.113.7"], 200), dtype="str")
    flows["dst_port"] = rng.integers(1, 40, 200).astype("int32")
    flows["bytes_out"] = rng.integers(0, 10_000, 200)
    flows["final"] = rng.random(200) < 0.8
    flows["src_namespace"] = "shop"
    flows["src_workload"] = "cart"
    flows["dst_namespace"] = pd.Series(np.where(flows["dst_ip"] == "10.244.2.9", "shop", ""), dtype="str")
    parts = pd.concat([rollup_flows(flows.iloc[:cut]), rollup_flows(flows.iloc[cut:])])
    whole = rollup_flows(flows)
    # Per peer and minute the totals agree; the port split may differ (scans fold per batch).
    peer = ["minute", "dst_namespace", "dst_external"]
    measures = ["bytes", "packets", "flows", "rejected"]
    pd.testing.assert_frame_equal(
        parts.groupby(peer)[measures].sum(), whole.groupby(peer)[measures].sum(), check_dtype=False
    )
