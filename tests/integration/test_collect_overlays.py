"""Pod traffic on a modelled node: real veths, real tunnels, the collector's real capture path.

Two "nodes" (namespaces) joined by an underlay veth, pods on veths routed Calico-style,
and a real tunnel between the nodes: the kernel's VXLAN device, or (this kernel has no
ipip/gre/geneve modules) a user-space endpoint writing the same wire format
(``tests/support/tunneld.py``). The collector's :class:`LiveCapture`
runs in node 1 (one ``dumpcap`` on ``any``), its batches are metered by the real
:class:`Meter`, and the flow records are checked against the ground truth: ``dumpcap`` in
the client pod's own namespace sees each of its packets exactly once, and ``tshark``
counts the inner packets of an uplink capture.
"""

from __future__ import annotations

import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flowwarden.collectors.capture import LiveCapture
from flowwarden.collectors.meter import Meter
from flowwarden.settings import CollectorSettings
from tests.support.netns import Host, Lab, netns_available, wait_for
from tests.support.podlab import Node, Pod, PodLab, tcp_exchange, udp_exchange

pytestmark = pytest.mark.integration

TUNNEL_OF = {"vxlan": "vxlan", "vxlan8472": "vxlan", "geneve": "geneve", "ipip": "ipip", "gre": "gre",
             "gretap": "gre", "native": ""}  # fmt: skip


@pytest.fixture
def lab() -> Iterator[Lab]:
    assert netns_available(), "these tests create network namespaces: run them as root"
    with Lab() as lab:
        yield lab


def _cluster(lab: Lab, overlay: str) -> tuple[PodLab, Node, Node, Pod, Pod, Pod]:
    pl = PodLab(lab)
    n1, n2 = pl.node("n1", 1), pl.node("n2", 2)
    pl.underlay(n1, n2)
    a1, a2 = pl.pod(n1, "a1", 5), pl.pod(n1, "a2", 6)
    b1 = pl.pod(n2, "b1", 7)
    pl.overlay(overlay, n1, n2)
    return pl, n1, n2, a1, a2, b1


class Reference:
    """``dumpcap`` into a file in one namespace: the ground truth to count with tshark."""

    def __init__(self, host: Host, iface: str, path: Path) -> None:
        self.path = path
        self.proc = host.popen("dumpcap", "-i", iface, "-P", "-w", str(path), "-q",
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(
            lambda: path.exists() and path.stat().st_size >= 24, timeout=10, what="the reference capture"
        )

    def stop(self) -> None:
        """Stop once the file has stopped growing (dumpcap loses its last ~0.3 s on a signal)."""
        last = {"size": -1, "since": time.monotonic()}

        def settled() -> bool:
            size = self.path.stat().st_size
            if size != last["size"]:
                last["size"], last["since"] = size, time.monotonic()
            return time.monotonic() - last["since"] >= 0.6

        wait_for(settled, timeout=10, what="the reference capture to settle")
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def count(self, display_filter: str, *decode_as: str) -> int:
        args = ["tshark", "-r", str(self.path), "-Y", display_filter]
        for d in decode_as:
            args += ["-d", d]
        out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
        return len(out.stdout.splitlines())


def _meter(cap: LiveCapture, node: str) -> pd.DataFrame:
    meter = Meter(CollectorSettings(node=node, app_names=False))
    frames: list[pd.DataFrame] = []
    for _ in range(100_000):  # bounded: the queue holds what the stopped capture delivered
        try:
            batch = cap.queue.get_nowait()
        except queue.Empty:
            break
        frames += meter.feed(batch)
    frames.append(meter.flush())
    return pd.concat([f for f in frames if len(f)], ignore_index=True)


def _flow(df: pd.DataFrame, a: Pod, sport: int, b: Pod, dport: int, proto: str = "tcp") -> pd.DataFrame:
    """Records of one 5-tuple in its initiator's direction."""
    m = (df.src_ip == a.ip) & (df.dst_ip == b.ip) & (df.src_port == sport) & (df.dst_port == dport)
    return df[m & (df.proto == {"tcp": 6, "udp": 17}[proto])]


@pytest.mark.parametrize("overlay", ["vxlan", "vxlan8472", "geneve", "ipip", "gre", "gretap", "native"])
def test_pod_traffic_on_workload_interfaces_and_uplink_is_counted_once(
    lab: Lab, tmp_path: Path, overlay: str
) -> None:
    _pl, n1, _n2, a1, a2, b1 = _cluster(lab, overlay)
    ref = Reference(a1.host, "eth0", tmp_path / "pod.pcap")  # a1 sees each of its packets once
    up = Reference(n1.host, "eth0", tmp_path / "uplink.pcap")
    cap = LiveCapture(["cali*", "eth0"], netns=n1.host.name)
    cap.start()
    try:
        same = int(tcp_exchange(a1, a2, 8080))
        cross = int(tcp_exchange(a1, b1, 8081))
        ucross = int(udp_exchange(a1, b1, 5300))
    finally:
        cap.stop()
        ref.stop()
        up.stop()
    df = _meter(cap, "n1")

    for peer, sport, dport, proto in (
        (a2, same, 8080, "tcp"),
        (b1, cross, 8081, "tcp"),
        (b1, ucross, 5300, "udp"),
    ):
        rec = _flow(df, a1, sport, peer, dport, proto)
        out = ref.count(f"ip.src=={a1.ip} && {proto}.srcport=={sport}")
        back = ref.count(f"ip.dst=={a1.ip} && {proto}.dstport=={sport}")
        assert out > 0 and back > 0
        # Same packets as the pod itself sent and received: none missed, none counted twice.
        assert (int(rec.pkts_out.sum()), int(rec.pkts_in.sum())) == (out, back), (peer.ip, overlay)
        # Bytes: the pod's Ethernet frames, wherever the collector saw them (inner length when tunnelled).
        assert int(rec.bytes_out.sum()) == _bytes(ref, f"ip.src=={a1.ip} && {proto}.srcport=={sport}")
        assert int(rec.bytes_in.sum()) == _bytes(ref, f"ip.dst=={a1.ip} && {proto}.dstport=={sport}")
    cross_rec = _flow(df, a1, cross, b1, 8081)
    assert set(cross_rec.node) == {"n1"}
    # The pod's own packets were counted on its veth (plain); the first packet decides the flow's
    # tunnel fields, and the pod's SYN is not tunnelled where it was counted.
    assert set(_flow(df, a1, same, a2, 8080).tunnel) == {""}
    assert cap.duplicates > 0  # a2's and the uplink's second sightings were left out

    # The uplink alone (a node where only eth0 can be captured): the inner pod flow, outer addresses kept.
    _uplink_only(overlay, up, a1, b1, cross, n1)


def _bytes(ref: Reference, display_filter: str) -> int:
    out = subprocess.run(
        ["tshark", "-r", str(ref.path), "-Y", display_filter, "-T", "fields", "-e", "frame.len"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return sum(int(x) for x in out.stdout.split())


def _uplink_only(overlay: str, up: Reference, a1: Pod, b1: Pod, cross: int, n1: Node) -> None:
    """Meter the reference uplink capture offline: each inner packet once, with its outer addresses."""
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.settings import Settings

    df, _report = meter_capture(up.path, Settings(collector={"node": "n1", "app_names": False}))
    rec = _flow(df, a1, cross, b1, 8081)
    decode_as = ["udp.port==8472,vxlan"] if overlay == "vxlan8472" else []
    out = up.count(f"ip.src=={a1.ip} && tcp.srcport=={cross}", *decode_as)
    back = up.count(f"ip.dst=={a1.ip} && tcp.dstport=={cross}", *decode_as)
    assert (int(rec.pkts_out.sum()), int(rec.pkts_in.sum())) == (out, back)
    assert set(rec.tunnel) == {TUNNEL_OF[overlay]}
    if overlay != "native":
        assert set(rec.outer_src_ip) == {n1.ip} and set(rec.outer_dst_ip) == {"192.168.50.2"}


def test_pods_that_appear_and_disappear_are_followed_without_restarting_the_capture(lab: Lab) -> None:
    pl, n1, _n2, a1, _a2, b1 = _cluster(lab, "vxlan")
    cap = LiveCapture(["cali*", "eth0"], netns=n1.host.name, poll_s=0.5)
    cap.start()
    try:
        pid = cap.captures[0]._proc.pid if cap.captures[0]._proc else 0
        late = pl.pod(n1, "late", 9)  # its veth appears while the capture runs
        sport = int(tcp_exchange(late, b1, 8082))
        wait_for(lambda: late.veth in cap.table.metered()["workload"], timeout=10, what="the new veth")
        n1.host.run("ip", "link", "del", a1.veth)  # a pod goes away
        wait_for(lambda: a1.veth not in cap.table.metered()["workload"], timeout=10, what="the veth to go")
        assert cap.captures[0].alive and cap.captures[0]._proc is not None
        assert cap.captures[0]._proc.pid == pid  # the same capture process throughout
    finally:
        cap.stop()
    df = _meter(cap, "n1")
    rec = _flow(df, late, sport, b1, 8082)
    assert int(rec.pkts_out.sum()) > 0 and int(rec.pkts_in.sum()) > 0


def test_pod_egress_masqueraded_by_the_node_is_one_pod_flow(lab: Lab, tmp_path: Path) -> None:
    """Pod to an outside address with source NAT on the uplink, as most clusters do egress."""
    _pl, n1, n2, a1, _a2, _b1 = _cluster(lab, "native")
    h = n1.host
    h.run("nft", "add", "table", "ip", "fwnat")
    h.run("nft", "add", "chain", "ip", "fwnat", "post", "{ type nat hook postrouting priority 100 ; }")
    h.run("nft", "add", "rule", "ip", "fwnat", "post", "oifname", "eth0", "ip", "saddr", "10.244.1.0/24",
          "ip", "daddr", "!=", "10.244.0.0/16", "masquerade")  # fmt: skip
    outside = Pod(n2.host, n2.ip, "n2", "")  # a server outside the pod network
    ref = Reference(a1.host, "eth0", tmp_path / "pod.pcap")
    cap = LiveCapture(["cali*", "eth0"], netns=n1.host.name)
    cap.start()
    try:
        sport = int(tcp_exchange(a1, outside, 8443, rounds=8))
    finally:
        cap.stop()
        ref.stop()
    df = _meter(cap, "n1")
    rec = _flow(df, a1, sport, outside, 8443)
    out = ref.count(f"ip.src=={a1.ip} && tcp.srcport=={sport}")
    back = ref.count(f"ip.dst=={a1.ip} && tcp.dstport=={sport}")
    assert (int(rec.pkts_out.sum()), int(rec.pkts_in.sum())) == (out, back)
    # No second flow between the node's address and the server for the same conversation.
    node_flows = df[
        ((df.src_ip == n1.ip) | (df.dst_ip == n1.ip)) & ((df.dst_port == 8443) | (df.src_port == 8443))
    ]
    assert node_flows.empty, node_flows[["src_ip", "src_port", "dst_ip", "dst_port", "pkts_out", "pkts_in"]]


@pytest.mark.parametrize("overlay", ["vxlan", "ipip"])
def test_a_pod_scanning_pods_on_both_nodes_is_the_alert_entity(
    lab: Lab, tmp_path: Path, overlay: str
) -> None:
    """nmap from a pod against a pod of its node and one of the other node: detected as that pod,
    from the workload-interface capture and, for the other node's target, from the uplink alone."""
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.pipeline.runtime.offline import detect_flows
    from flowwarden.settings import Settings

    _pl, n1, _n2, a1, a2, b1 = _cluster(lab, overlay)
    up = Reference(n1.host, "eth0", tmp_path / "uplink.pcap")
    cap = LiveCapture(["cali*", "eth0"], netns=n1.host.name)
    cap.start()
    try:
        a1.host.run("nmap", "-n", "-Pn", "-sS", "-p", "1-300", "--max-retries", "0", "--min-rate", "2000",
                    a2.ip, b1.ip, timeout=120)  # fmt: skip
    finally:
        cap.stop()
        up.stop()
    settings = Settings(collector={"node": "n1", "app_names": False})
    for source, flows in (("workload", _meter(cap, "n1")), ("uplink", meter_capture(up.path, settings)[0])):
        scanned = {a2.ip, b1.ip} if source == "workload" else {b1.ip}
        for target in scanned:
            probed = flows[(flows.src_ip == a1.ip) & (flows.dst_ip == target)]
            assert probed.dst_port.nunique() >= 250, (source, target)  # each probe seen, with pod addresses
        alerts = detect_flows(flows, settings=settings, keep_windows=False).alerts
        scans = [a for a in alerts if a.detector == "port_scan"]
        assert scans, (source, [a.detector for a in alerts])
        assert {a.entity.ip for a in scans} == {a1.ip}, source
        assert not [a for a in alerts if a.entity.ip in (n1.ip, "192.168.50.2")], source
