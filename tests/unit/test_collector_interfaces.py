"""Interface patterns, per-CNI defaults, and the one-sighting rule on crafted SLL2 batches."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from flowwarden.collectors.decode import V4_MAPPED, decode
from flowwarden.collectors.flowtable import ip_strings
from flowwarden.collectors.interfaces import (
    IGNORED,
    UPLINK,
    WORKLOAD,
    InterfaceTable,
    SightingFilter,
    Snapshot,
    addr_key,
    check_patterns,
    default_patterns,
    detect_cni,
    link_roles,
    role_of,
)
from flowwarden.collectors.pcapfile import PcapStream
from flowwarden.errors import ConfigError
from flowwarden.settings import CollectorSettings
from tests.data.make_overlay_pcaps import build_cases
from tests.unit.test_collector_pcapfile import pcap

POD_A, POD_B, REMOTE, NODE = "10.244.1.5", "10.244.1.6", "10.244.2.7", "192.168.50.1"
CALI_A, CALI_B, ETH0, LO = 5, 6, 2, 1


def _ip(src: str, dst: str, sport: int = 40000, dport: int = 80, ident: int = 0) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK)
    return bytes(dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, id=ident, data=t))


def _sll2(ifindex: int, outgoing: bool, payload: bytes, ethertype: int = 0x0800) -> bytes:
    return struct.pack(">HHIHBB8s", ethertype, 0, ifindex, 1, 4 if outgoing else 0, 6, b"\0" * 8) + payload


def _filter() -> SightingFilter:
    table = InterfaceTable(["cali*", "eth0"])
    roles = np.zeros(8, dtype=np.int8)
    roles[[CALI_A, CALI_B]] = WORKLOAD
    roles[ETH0] = UPLINK
    node = addr_key(np.zeros(1, dtype=np.uint64), np.array([int(V4_MAPPED) | 0xC0A83201], dtype=np.uint64))
    names = {LO: "lo", ETH0: "eth0", CALI_A: "calia", CALI_B: "calib"}
    table.snapshot = Snapshot(names, {}, roles, node)
    f = SightingFilter(table, lookup_interval_s=3600)  # no look-ups: the snapshot is the truth here
    f._looked_up = float("inf")
    return f


def _kept(f: SightingFilter, frames: list[bytes]) -> list[tuple[str, str]]:
    batch = PcapStream().feed(pcap([(1.0 + i / 1000, fr) for i, fr in enumerate(frames)], linktype=276))
    d = decode(f.apply(batch))
    return list(
        zip(ip_strings(d.src_hi, d.src_lo).tolist(), ip_strings(d.dst_hi, d.dst_lo).tolist(), strict=True)
    )


def test_patterns_are_validated_before_they_reach_anything() -> None:
    assert check_patterns(["cali*", "eth0", "en?1"]) == ["cali*", "eth0", "en?1"]
    for bad in ["eth0;rm", "eth 0", "a" * 16, "cali[0-9]", "", "$(x)"]:
        with pytest.raises(ConfigError, match=r"collector\.interfaces"):
            check_patterns([bad])
        with pytest.raises(ValidationError, match="not interface names or patterns"):
            CollectorSettings(interfaces=[bad])  # the settings refuse it too (config check)


def test_roles_and_per_cni_defaults() -> None:
    pats = ["cali*", "eth0"]
    assert (role_of("cali1234", pats), role_of("eth0", pats), role_of("lo", pats)) == (
        WORKLOAD,
        UPLINK,
        IGNORED,
    )
    assert role_of("tunl0", pats) == IGNORED  # the overlay device would show inner packets a second time
    assert detect_cni(["lo", "eth0", "tunl0", "cali1"]) == ["calico"]
    assert detect_cni(["lo", "eth0", "cilium_host", "lxc1"]) == ["cilium"]
    assert default_patterns(["lo", "eth0", "cilium_host"], ["eth0"]) == ["lxc*", "eth0"]
    assert default_patterns(["lo", "ens5", "flannel.1", "cni0"], ["ens5"]) == ["veth*", "ens5"]
    # No CNI yet (no pods): every known pod pattern, so the first pods are not missed.
    assert "cali*" in default_patterns(["lo", "eth0"], ["eth0"])


def test_a_matched_bridge_stands_for_its_ports() -> None:
    names = {1: "lo", 2: "eth0", 3: "cni0", 4: "vethab12", 5: "vethcd34", 6: "docker0", 7: "vethx"}
    masters = {4: "cni0", 5: "cni0", 7: "docker0"}
    roles = link_roles(names, masters, ["cni0", "eth0"])
    # The bridge's ports are the pods' interfaces; the bridge itself would see frames twice.
    assert roles == {1: IGNORED, 2: UPLINK, 3: IGNORED, 4: WORKLOAD, 5: WORKLOAD, 6: IGNORED, 7: IGNORED}
    assert link_roles(names, masters, ["eth0"])[4] == IGNORED, "an unmatched bridge changes nothing"


def test_same_node_pod_to_pod_is_counted_at_the_sender_only() -> None:
    f = _filter()
    req, resp = _ip(POD_A, POD_B), _ip(POD_B, POD_A, 80, 40000)
    frames = [
        _sll2(CALI_A, False, req),  # A sends: kept
        _sll2(CALI_B, True, req),  # forwarded to B: a second sighting
        _sll2(CALI_B, False, resp),  # B answers: kept
        _sll2(CALI_A, True, resp),  # forwarded to A
    ]
    assert _kept(f, frames) == [(POD_A, POD_B), (POD_B, POD_A)]
    assert f.duplicates == 2


def test_cross_node_traffic_is_counted_on_the_pod_veth_out_and_on_the_uplink_in() -> None:
    f = _filter()
    out, back = _ip(POD_A, REMOTE), _ip(REMOTE, POD_A, 80, 40000)
    vxlan = next(c for c in build_cases() if c.name == "overlay_vxlan").frames[0][14:]  # outer IP onwards
    frames = [
        _sll2(CALI_A, False, out),  # pod sends: kept, and its address is learned
        _sll2(ETH0, True, out),  # the same packet leaving the node natively: dropped
        _sll2(ETH0, True, vxlan),  # ...or encapsulated: its inner source is a pod of this node
        _sll2(ETH0, False, back),  # the answer arrives: kept
        _sll2(CALI_A, True, back),  # and is forwarded to the pod: dropped
        _sll2(ETH0, True, _ip(NODE, "1.1.1.1")),  # the node's own traffic out: kept
        _sll2(CALI_A, True, _ip(NODE, POD_A)),  # the node probing its pod (kubelet): kept
        _sll2(LO, True, _ip("127.0.0.1", "127.0.0.1")),  # no pattern matches lo: ignored
    ]
    assert _kept(f, frames) == [(POD_A, REMOTE), (REMOTE, POD_A), (NODE, "1.1.1.1"), (NODE, POD_A)]
    assert (f.duplicates, f.ignored) == (3, 1)


def test_pod_egress_masqueraded_to_the_node_address_is_not_counted_again() -> None:
    f = _filter()
    frames = [
        _sll2(CALI_A, False, _ip(POD_A, "1.1.1.1", 40000, 443, ident=77)),  # the pod sends: kept
        _sll2(ETH0, True, _ip(NODE, "1.1.1.1", 61000, 443, ident=77)),  # after SNAT on the uplink: dropped
        _sll2(ETH0, True, _ip(NODE, "1.1.1.1", 52000, 443, ident=78)),  # the node's own packet: kept
    ]
    assert _kept(f, frames) == [(POD_A, "1.1.1.1"), (NODE, "1.1.1.1")]
    assert f.duplicates == 1
    answers = [
        _sll2(ETH0, False, _ip("1.1.1.1", NODE, 443, 61000, ident=90)),  # to the node, before un-NAT: dropped
        _sll2(CALI_A, True, _ip("1.1.1.1", POD_A, 443, 40000, ident=90)),  # to the pod: counted here
        _sll2(ETH0, False, _ip("1.1.1.1", NODE, 443, 52000, ident=91)),  # the node's own answer: kept
    ]
    assert _kept(f, answers) == [("1.1.1.1", POD_A), ("1.1.1.1", NODE)]
    assert f.duplicates == 2


def test_lengths_are_ethernet_frames_not_the_cooked_header() -> None:
    f = _filter()
    req = _ip(POD_A, POD_B)
    batch = PcapStream().feed(pcap([(1.0, _sll2(CALI_A, False, req))], linktype=276))
    wire = int(batch.wirelen[0])  # the helper records 4 bytes more on the wire than captured
    assert f.apply(batch).wirelen.tolist() == [wire - 20 + 14]


def test_other_link_types_pass_unchanged() -> None:
    f = _filter()
    eth = b"\x02" * 12 + b"\x08\x00" + _ip(POD_A, POD_B)
    batch = PcapStream().feed(pcap([(1.0, eth), (2.0, eth)]))
    assert f.apply(batch) is batch


def test_the_shipped_manifests_use_the_per_cni_default() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy"
    cm = yaml.safe_load((root / "kubernetes" / "configmap.yaml").read_text())
    assert yaml.safe_load(cm["data"]["flowwarden.yaml"])["collector"]["interfaces"] == ["auto"]
    ds = next(
        d
        for d in yaml.safe_load_all((root / "kubernetes" / "collector.yaml").read_text())
        if d["kind"] == "DaemonSet"
    )
    assert "--interface" not in ds["spec"]["template"]["spec"]["containers"][0]["args"]
    values = yaml.safe_load((root / "helm" / "flowwarden" / "values.yaml").read_text())
    assert values["config"]["collector"]["interfaces"] == ["auto"]
    assert "--interface" not in (root / "helm" / "flowwarden" / "templates" / "collector.yaml").read_text()
