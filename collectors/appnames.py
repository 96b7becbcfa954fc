"""Application-layer server names (TLS SNI, HTTP Host) joined to flows.

A hand parser gets these wrong (TLS extensions, fragmented ClientHellos, HTTP quirks), so
tshark dissects them, but only the packets that carry them: the metering path selects the
first ClientHello and the first HTTP request of each flow by their first payload bytes
(:mod:`collectors.decode`) and this module streams just those packets, as raw IP, into one
long-running ``tshark -r -`` (one process for the whole run, no start-up cost per batch).
Its text output comes back on a reader thread, keyed by frame number, and is folded per
flow uid into ``server_name``: the TLS SNI, else the HTTP Host header.

DNS is not here: every DNS message of a flow is parsed in the metering path itself
(:mod:`collectors.dnsparse`), because tshark on every DNS packet cost more than the
metering (figures in ``benchmarks/bench_collector.py``).
"""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowwarden.collectors.meter import Candidates
from flowwarden.errors import ServiceUnavailable

log = logging.getLogger("flowwarden.collector.appnames")

FIELDS = ("frame.number", "tls.handshake.extensions_server_name", "http.host")
DLT_RAW = 101
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, DLT_RAW)
_REC = struct.Struct("<IIII")


def tshark_path() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise ServiceUnavailable(
            "tshark is not installed: apt-get install tshark (or set collector.app_names: false)"
        )
    return path


@dataclass
class _Names:
    sni: str = ""
    host: str = ""


class NameDissector:
    """One tshark process fed with candidate packets; names folded per flow uid."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._frame_uid: dict[int, int] = {}
        self._names: dict[int, _Names] = {}
        self.written = 0
        self.dissected = 0  # frames whose output line was read (or skipped by tshark's filter)
        self.errors = 0

    def start(self) -> None:
        args = [
            tshark_path(),
            "-n",
            "-l",
            "-r",
            "-",
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-E",
            "occurrence=f",
        ]
        for f in FIELDS:
            args += ["-e", f]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(_PCAP_HEADER)
        self._reader = threading.Thread(target=self._read, name="tshark-names", daemon=True)
        self._reader.start()

    def submit(self, cands: Candidates) -> None:
        """Stream candidate packets to tshark (their frame numbers map back to flow uids)."""
        if not len(cands) or self._proc is None or self._proc.stdin is None:
            return
        parts = []
        with self._lock:
            for pkt, wire, ts, uid in zip(cands.packets, cands.wirelen, cands.ts, cands.uids, strict=True):
                self.written += 1
                self._frame_uid[self.written] = uid
                sec = int(ts)
                parts.append(_REC.pack(sec, int((ts - sec) * 1e6), len(pkt), max(wire, len(pkt))))
                parts.append(pkt)
        try:
            self._proc.stdin.write(b"".join(parts))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.errors += 1
            log.warning("tshark name dissector stopped accepting packets error=%s", exc)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            parts = raw.decode("utf-8", "replace").rstrip("\n").split("\t")
            if len(parts) != len(FIELDS) or not parts[0].isdigit():
                continue
            frame = int(parts[0])
            with self._cond:
                uid = self._frame_uid.pop(frame, None)
                if uid is not None:
                    self._fold(self._names.setdefault(uid, _Names()), parts)
                self.dissected = max(self.dissected, frame)
                self._cond.notify_all()
        with self._cond:
            self.dissected = self.written
            self._cond.notify_all()

    @staticmethod
    def _fold(n: _Names, p: list[str]) -> None:
        _, sni, host = p
        if sni and not n.sni:
            n.sni = sni
        if host and not n.host:
            n.host = host

    def wait(self, timeout_s: float) -> bool:
        """Wait until every submitted packet was dissected (True) or the deadline passed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.dissected < self.written:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """End of input: let tshark finish, then stop it."""
        if self._proc is None:
            return
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                self.errors += 1
        if self._reader is not None:
            self._reader.join(timeout_s)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=timeout_s)

    def forget(self, uids: np.ndarray) -> None:
        """Drop the names of flows that ended (with or without a final record): the flow
        table reports them, so a long-running collector keeps names of open flows only."""
        with self._lock:
            pop = self._names.pop
            for u in uids.tolist():
                pop(u, None)

    def join(self, records: pd.DataFrame) -> pd.DataFrame:
        """Fill ``server_name`` of records by their ``uid`` (DNS columns are the meter's)."""
        if len(records) == 0 or "uid" not in records.columns:
            return records
        uids = records["uid"].to_numpy()
        with self._lock:
            found = [self._names.get(u) for u in uids.tolist()]
        if not any(found):
            return records
        records = records.copy()
        has = np.array([f is not None for f in found])
        sn = np.array([(f.sni or f.host) if f else "" for f in found], dtype=object)
        idx = records.index
        records["server_name"] = pd.Series(
            np.where(has, sn, records["server_name"].to_numpy()), index=idx, dtype="str"
        )
        return records
