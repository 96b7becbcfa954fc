"""A short lab run (about two minutes, quick attacks): every tool leaves its traffic in the capture.

Records into a temporary folder (the committed captures are not touched), meters the capture
with the collector's offline path, and checks each tool's flows; then that the lab left no
namespace, resolver file or process behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.lab import topology as T
from tests.lab.attacks import LAB_TECHNIQUES
from tests.lab.record import missing_tools, record
from tests.support.netns import netns_available

pytestmark = [pytest.mark.netns, pytest.mark.integration, pytest.mark.timeout(280)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    assert netns_available(), "the lab creates network namespaces: run as root"
    assert not missing_tools(), f"missing tools: {missing_tools()} (scripts/install-system-deps.sh)"
    from flowwarden.collectors.offline import meter_capture
    from flowwarden.settings import load_settings

    out = tmp_path_factory.mktemp("lab")
    labels = record(out, minutes=1.5, seed=5, jitter=0.4, learning_min=0.33, quick=True, log=lambda _m: None)
    flows, _ = meter_capture(out / "capture.pcap", load_settings(out / "lab.yaml"))
    return out, labels, flows


def _attacker(flows: pd.DataFrame, labels: dict, technique: str) -> pd.DataFrame:
    """The attacker pod's flows during its episodes of ``technique`` (plus a second either side)."""
    eps = [e for e in labels["episodes"] if e["technique"] == technique]
    start = min(pd.Timestamp(e["start"]).timestamp() for e in eps) - 1
    end = max(pd.Timestamp(e["end"]).timestamp() for e in eps) + 1
    f = flows[flows["src_ip"] == T.ATTACKER_POD.ip]
    return f[(f["ts_start"] <= end) & (f["ts_end"] >= start)]


def test_every_technique_is_labelled(quick_run) -> None:
    _, labels, _ = quick_run
    assert {e["technique"] for e in labels["episodes"]} == set(LAB_TECHNIQUES)
    assert all(e["start"] <= e["end"] for e in labels["episodes"])


def test_nmap_swept_and_scanned_the_control_plane(quick_run) -> None:
    _, labels, flows = quick_run
    sweep = _attacker(flows, labels, "ip_sweep")
    assert sweep["dst_ip"].str.startswith("10.0.0.").sum() > 0
    assert sweep["dst_ip"].nunique() >= 20  # -sn probed the /27
    scan = _attacker(flows, labels, "port_scan")
    ports = set(scan.loc[scan["dst_ip"] == T.CONTROL_PLANE, "dst_port"])
    assert set(T.CP_PORTS) <= ports and len(ports) > 500


def test_curl_reached_etcd_kubelet_api_and_metadata(quick_run) -> None:
    _, labels, flows = quick_run
    cp = _attacker(flows, labels, "control_plane_access")
    answered = cp[cp["bytes_in"] > 0]
    assert {(T.CONTROL_PLANE, 2379), (T.NODE_B, 10250), (T.CONTROL_PLANE, 6443)} <= set(
        zip(answered["dst_ip"], answered["dst_port"], strict=True)
    )
    md = _attacker(flows, labels, "metadata_api")
    assert md.loc[md["dst_ip"] == T.METADATA, "bytes_in"].sum() > 0


def test_hydra_guessed_passwords_on_two_sshd(quick_run) -> None:
    _, labels, flows = quick_run
    ssh = _attacker(flows, labels, "brute_force")
    ssh = ssh[(ssh["dst_port"] == 22) & (ssh["bytes_in"] > 0)]  # sshd answered (its banner at least)
    sessions = ssh.groupby("dst_ip")["src_port"].nunique()
    assert set(sessions.index) == {T.NODE_A, T.NODE_B} and sessions.min() >= 2


def test_beacon_upload_and_iodine_tunnel(quick_run) -> None:
    _, labels, flows = quick_run
    beacon = _attacker(flows, labels, "beaconing")
    assert beacon.loc[beacon["dst_ip"] == T.ATTACKER, "src_port"].nunique() >= 5  # 6 check-ins
    bulk = _attacker(flows, labels, "bulk_exfiltration")
    assert bulk.loc[bulk["dst_ip"] == T.EXFIL, "bytes_out"].sum() > 7_000_000  # 8 MB curl -T
    tunnel = _attacker(flows, labels, "dns_tunnel")
    dns = tunnel[(tunnel["dst_ip"] == T.CLUSTER_DNS) & (tunnel["dst_port"] == 53)]
    assert dns.groupby("src_port")["pkts_out"].sum().max() >= 50  # iodine: one socket, many queries
    upstream = flows[(flows["src_ip"] == T.CLUSTER_DNS) & (flows["dst_ip"] == T.ATTACKER)]
    assert len(upstream) > 0  # the cluster DNS forwarded the tunnel to iodined
    assert upstream["dns_qname"].fillna("").str.endswith(T.TUNNEL_DOMAIN).any()


def test_backup_job_and_benign_traffic(quick_run) -> None:
    out, labels, flows = quick_run
    assert any(h["id"].startswith("hn-backup") for h in labels["hard_negatives"])
    backups = flows[flows["dst_ip"] == T.STORAGE]
    assert backups["bytes_out"].sum() > 3_000_000
    scraper = flows[flows["src_ip"] == T.POD_BY_ROLE["prometheus"].ip]
    scraped = scraper[scraper["dst_port"] != 53]  # (and its name lookups)
    assert scraped["dst_port"].isin([T.METRICS_PORT, T.KUBELET_PORT, T.API_PORT]).all() and len(scraped) > 5
    pods = json.loads((out / "pods.json").read_text())["items"]
    assert any(p["status"]["phase"] == "Succeeded" for p in pods)  # a finished backup run


def test_lab_cleaned_up(quick_run) -> None:
    _, labels, _ = quick_run
    prefix = labels["lab"]["netns_prefix"]
    assert prefix
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed
    assert not list(Path("/etc/netns").glob(f"{prefix}-*"))
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert prefix not in procs
