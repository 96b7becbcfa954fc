"""Rule detectors across batches: address verdicts reset on a feed change; late flows still count."""

from __future__ import annotations

from flowwarden.feeds import FeedSet, parse_feed
from flowwarden.pipeline.detection.detectors.threat_feed import ThreatFeed
from flowwarden.pipeline.detection.engine import DetectionEngine
from flowwarden.records import Alert
from flowwarden.settings import Settings
from tests.unit.flowkit import T0, flows
from tests.unit.test_rule_detectors import SHOP_API, _conn, _inventory

C2 = "192.0.2.66"


def _feeds(*entries: str) -> FeedSet:
    return FeedSet([parse_feed("c2", "".join(f"{e}\n" for e in entries), "lines")])


def _threat_feed(engine: DetectionEngine) -> ThreatFeed:
    return next(d for d in engine.detectors if isinstance(d, ThreatFeed))


def _hits(alerts: list[Alert]) -> set[str]:
    return {t for a in alerts if a.detector == "threat_feed" for t in a.targets}


def _minute(engine: DetectionEngine, t: float) -> list[Alert]:
    """One batch of connections to the C2 address, one window after another."""
    batch = flows([_conn(SHOP_API, C2, 443, t + i) for i in range(3)])
    return list(engine.process(batch).alerts)


def test_a_feed_change_resets_the_address_verdicts() -> None:
    engine = DetectionEngine(Settings(), inventory=_inventory())
    det = _threat_feed(engine)
    det.set_feeds(_feeds("203.0.113.0/24"), "v1")  # C2 not listed yet
    alerts = _minute(engine, T0 + 1) + _minute(engine, T0 + 61)
    assert C2 in det._listed and det._listed[C2] is False  # its verdict was cached
    assert _hits(alerts) == set()
    det.set_feeds(_feeds("203.0.113.0/24", C2), "v2")  # now it is: the cached "no" must go
    alerts = _minute(engine, T0 + 121) + _minute(engine, T0 + 181) + list(engine.flush().alerts)
    assert _hits(alerts) == {C2}
    assert det._listed[C2] is True
    det.set_feeds(_feeds("203.0.113.0/24"), "v3")  # delisted: no new hits from here on
    before = det.tally["c2"]
    alerts = _minute(engine, T0 + 301) + _minute(engine, T0 + 361) + list(engine.flush().alerts)
    assert _hits(alerts) == set()
    assert det.tally["c2"] == before


def test_a_late_flow_to_a_listed_address_alerts_in_an_open_window() -> None:
    """A flow arriving after its window closed (a slow partition) is folded into an open window
    by the engine; its finding must be too, even when nothing was pending before."""
    engine = DetectionEngine(Settings(), inventory=_inventory())
    _threat_feed(engine).set_feeds(_feeds(C2), "v1")
    benign = flows([_conn(SHOP_API, "203.0.113.9", 443, T0 + 10 * i) for i in range(30)])
    alerts = list(engine.process(benign).alerts)  # five minutes: most windows close
    assert _hits(alerts) == set()
    late = flows([_conn(SHOP_API, C2, 443, T0 + 15), _conn(SHOP_API, "203.0.113.9", 443, T0 + 301)])
    alerts = list(engine.process(late).alerts) + list(engine.flush().alerts)
    assert _hits(alerts) == {C2}
