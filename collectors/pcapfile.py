"""Reading pcap and pcapng streams into columnar packet batches.

Why columns: the metering path must never build one Python object per packet. A chunk of
the capture (a file chunk, or what a capture tool wrote to its pipe) is parsed into numpy
arrays of packet offsets, lengths and timestamps over one shared byte buffer; the decoder
then takes header fields at those offsets with fancy indexing.

The only per-packet Python work is the walk over record headers (records have variable
length, so each offset depends on the previous one); it is a tight loop over one
``struct.unpack_from`` per record, measured in ``benchmarks/bench_collector.py``.

A truncated or corrupt capture is read up to its last good record: :class:`PcapStream`
stops there, sets :attr:`PcapStream.error` and counts the bytes it could not read.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("flowwarden.collector.pcap")

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
MAX_RECORD = 262_144  # Wireshark's maximum snap length; a larger record header is corruption
MAX_BLOCK = 16 * 1024 * 1024
PAD = 128  # zero bytes after the last packet so header gathers never index past the buffer

_U32LE = struct.Struct("<I")
_U32BE = struct.Struct(">I")


class CaptureFormatError(ValueError):
    """The stream is neither pcap nor pcapng (a clear message, raised at the first bytes)."""


@dataclass
class PacketBatch:
    """Packets of one chunk: offsets into ``buf`` plus per-packet lengths and metadata."""

    buf: np.ndarray  # uint8, padded with PAD zero bytes
    off: np.ndarray  # int64 offset of each packet's first captured byte
    caplen: np.ndarray  # int64 captured bytes
    wirelen: np.ndarray  # int64 original length on the wire (frame bytes)
    ts: np.ndarray  # float64 epoch seconds
    linktype: np.ndarray  # int64 DLT per packet

    def __len__(self) -> int:
        return len(self.off)

    @staticmethod
    def empty() -> PacketBatch:
        z = np.zeros(0, dtype=np.int64)
        return PacketBatch(np.zeros(PAD, np.uint8), z, z, z, np.zeros(0), z)


def _gather(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Bytes ``buf[pos : pos + width]`` for every position, as an (n, width) array."""
    return buf[pos[:, None] + np.arange(width)]


def _u32(raw: np.ndarray, big: bool) -> np.ndarray:
    return np.ascontiguousarray(raw).view(">u4" if big else "<u4").astype(np.int64).ravel()


@dataclass
class _Interface:
    linktype: int
    ts_scale: float  # seconds per timestamp unit


class _RecordChain:
    """The pcap record walk, vectorised: which byte offsets of a chunk start a record.

    A record's offset depends on the previous record's length, so the walk is sequential;
    doing it in Python costs about a third of metering. Instead: take as candidates every
    offset whose two high timestamp bytes match the first record's (a capture's seconds
    change those bytes every 18 hours), keep the candidates that another candidate's record
    ends at and whose own record ends at a candidate, and accept a run only where each
    record ends exactly where the next one starts. Such a run *is* the sequential walk (by
    induction from a known record start), so the result never depends on the guess; an
    offset the run cannot vouch for (a stray candidate inside a packet, a timestamp that
    crossed the byte, a corrupt length) is walked record by record by the caller.
    """

    def __init__(self, raw: np.ndarray, pos: int, big: bool) -> None:
        self.starts = np.zeros(0, dtype=np.int64)
        self.ends = np.zeros(0, dtype=np.int64)
        self.breaks = np.zeros(0, dtype=np.int64)
        n = len(raw)
        if n - pos < 16 * 64:  # a few records: the plain walk is cheaper
            return
        hi, lo = (0, 1) if big else (3, 2)  # the timestamp's seconds: most, next significant byte
        top, second = int(raw[pos + hi]), int(raw[pos + lo])
        cand = np.flatnonzero(raw[hi : hi + n - 15] == top).astype(np.int64)
        near = raw[cand + lo].astype(np.int16) - second
        cand = cand[(near == 0) | (near == 1)]
        cand = cand[cand >= pos]
        if not len(cand):
            return
        b = raw[cand[:, None] + (8 + np.arange(4))].astype(np.int64)
        caplen = (
            (b[:, 0] << 24 | b[:, 1] << 16 | b[:, 2] << 8 | b[:, 3])
            if big
            else (b[:, 3] << 24 | b[:, 2] << 16 | b[:, 1] << 8 | b[:, 0])
        )
        keep = caplen <= MAX_RECORD
        cand, ends = cand[keep], cand[keep] + 16 + caplen[keep]
        # A record start is where another record ends (or where the walk starts).
        pointed = np.zeros(n + 1, dtype=bool)
        inside = ends <= n
        pointed[ends[inside]] = True
        pointed[pos] = True
        keep = pointed[cand]
        self.starts, self.ends = cand[keep], ends[keep]
        # Where a run stops: a record that does not end where the next kept candidate starts.
        self.breaks = np.flatnonzero(self.ends[:-1] != self.starts[1:])
        self.breaks = np.append(self.breaks, len(self.starts) - 1).astype(np.int64)

    def run_from(self, pos: int, n: int) -> tuple[np.ndarray, int]:
        """Record starts of the verified run beginning at ``pos`` and the offset after it."""
        i = int(np.searchsorted(self.starts, pos))
        if i >= len(self.starts) or self.starts[i] != pos:
            return self.starts[:0], pos
        j = int(self.breaks[np.searchsorted(self.breaks, i)])
        if self.ends[j] > n:  # the run's last record is cut by the chunk's end
            j -= 1
        if j < i:
            return self.starts[:0], pos
        return self.starts[i : j + 1], int(self.ends[j])


@dataclass
class PcapStream:
    """Incremental parser: :meth:`feed` bytes as they arrive, get :class:`PacketBatch` es.

    Works for a live pipe (``tcpdump -w -``) and for a file read in chunks alike.
    """

    packets: int = 0
    bad_bytes: int = 0  # bytes left unread after a corrupt or truncated record
    error: str = ""
    _pending: bytes = b""
    _kind: str = ""  # "pcap" | "pcapng"
    _big: bool = False
    _ts_scale: float = 1e-6
    _linktype: int = 1
    _ifaces: list[_Interface] = field(default_factory=list)
    _section_base: int = 0
    _offset: int = 0  # stream offset of _pending's first byte

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def started(self) -> bool:
        """The stream's header has been read."""
        return bool(self._kind)

    def feed(self, data: bytes) -> PacketBatch:
        """Parse as many whole records as ``data`` (plus what was left over) holds."""
        if self.failed:
            self.bad_bytes += len(data)
            return PacketBatch.empty()
        buf = self._pending + data if self._pending else bytes(data)
        pos = 0
        if not self._kind:
            pos = self._header(buf)
            if pos < 0:
                self._pending = buf
                return PacketBatch.empty()
        if self._kind == "pcap":
            batch, pos = self._walk_pcap(buf, pos)
        else:
            batch, pos = self._walk_pcapng(buf, pos)
        self._offset += pos
        self._pending = buf[pos:]
        if self.failed:
            self.bad_bytes += len(self._pending)
            self._pending = b""
        self.packets += len(batch)
        return batch

    def close(self) -> None:
        """End of stream: a partial record left over means the capture was truncated."""
        if self._pending and not self.failed:
            self.error = f"capture truncated: {len(self._pending)} bytes of a partial record at the end"
            self.bad_bytes += len(self._pending)
            self._pending = b""
        elif not self._kind and not self.failed:
            self.error = "empty capture: no pcap header"

    # ------------------------------------------------------------------ headers

    def _header(self, buf: bytes) -> int:
        """Read the file header; -1 when more bytes are needed."""
        if len(buf) < 4:
            return -1
        magic_le = _U32LE.unpack_from(buf, 0)[0]
        if magic_le == PCAPNG_SHB:
            self._kind = "pcapng"
            return 0  # the SHB is parsed as a block
        if len(buf) < 24:
            return -1
        for big, unpack in ((False, _U32LE), (True, _U32BE)):
            magic = unpack.unpack_from(buf, 0)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                self._kind, self._big = "pcap", big
                self._ts_scale = 1e-6 if magic == PCAP_MAGIC_US else 1e-9
                self._linktype = unpack.unpack_from(buf, 20)[0] & 0x0FFFFFFF
                return 24
        raise CaptureFormatError(f"not a pcap or pcapng capture (first bytes {buf[:4].hex()})")

    # ------------------------------------------------------------------ pcap

    def _walk_pcap(self, buf: bytes, pos: int) -> tuple[PacketBatch, int]:
        n = len(buf)
        raw = np.frombuffer(buf, dtype=np.uint8)
        chain = _RecordChain(raw, pos, self._big)
        parts: list[np.ndarray] = []
        singles: list[int] = []
        unpack = (_U32BE if self._big else _U32LE).unpack_from
        while pos + 16 <= n:
            run, after = chain.run_from(pos, n)
            if len(run):
                if singles:
                    parts.append(np.asarray(singles, dtype=np.int64))
                    singles = []
                parts.append(run)
                pos = after
                continue
            # One record the vectorised chain could not vouch for: walk it here.
            caplen = unpack(buf, pos + 8)[0]
            if caplen > MAX_RECORD:
                self.error = f"corrupt record header at byte {self._offset + pos} (caplen {caplen})"
                break
            end = pos + 16 + caplen
            if end > n:
                break
            singles.append(pos)
            pos = end
        if singles:
            parts.append(np.asarray(singles, dtype=np.int64))
        if not parts:
            return PacketBatch.empty(), pos
        arr = np.concatenate([raw[:pos], np.zeros(PAD, np.uint8)])
        rec = parts[0] if len(parts) == 1 else np.concatenate(parts)
        hdr = _u32(_gather(arr, rec, 16), self._big).reshape(-1, 4)
        caplen_a = hdr[:, 2]
        wirelen = np.maximum(hdr[:, 3], caplen_a)
        ts = hdr[:, 0].astype(np.float64) + hdr[:, 1].astype(np.float64) * self._ts_scale
        lt = np.full(len(rec), self._linktype, dtype=np.int64)
        return PacketBatch(arr, rec + 16, caplen_a, wirelen, ts, lt), pos

    # ------------------------------------------------------------------ pcapng

    def _walk_pcapng(self, buf: bytes, pos: int) -> tuple[PacketBatch, int]:
        n = len(buf)
        epb: list[int] = []
        spb: list[int] = []
        # (index into epb/spb where a section starts, interface base of that section)
        iface_of_epb: list[tuple[int, int]] = [(0, self._section_base)]
        unpack = (_U32BE if self._big else _U32LE).unpack_from
        while pos + 12 <= n:
            btype = unpack(buf, pos)[0]
            if btype == PCAPNG_SHB:
                bom = _U32LE.unpack_from(buf, pos + 8)[0]
                if bom == PCAPNG_BOM:
                    self._big = False
                elif bom == 0x4D3C2B1A:
                    self._big = True
                else:
                    self.error = f"corrupt pcapng section header at byte {self._offset + pos}"
                    break
                unpack = (_U32BE if self._big else _U32LE).unpack_from
            blen = unpack(buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                self.error = f"corrupt pcapng block at byte {self._offset + pos} (length {blen})"
                break
            if pos + blen > n:
                break
            if btype == 6:
                epb.append(pos)
            elif btype == 3:
                spb.append(pos)
            elif btype == 1:
                self._interface(buf, pos, blen)
            elif btype == PCAPNG_SHB:
                self._section_base = len(self._ifaces)
                iface_of_epb.append((len(epb), self._section_base))
            pos += blen
        if not epb and not spb:
            return PacketBatch.empty(), pos
        arr = np.concatenate([np.frombuffer(buf, dtype=np.uint8, count=pos), np.zeros(PAD, np.uint8)])
        batches = []
        if epb:
            rec = np.asarray(epb, dtype=np.int64)
            hdr = _u32(_gather(arr, rec + 8, 20), self._big).reshape(-1, 5)
            base = np.zeros(len(rec), dtype=np.int64)
            for start, b in iface_of_epb:
                base[start:] = b
            iface = hdr[:, 0] + base
            known = iface < len(self._ifaces)
            if not known.all():
                self.error = "pcapng packet refers to an interface that was never described"
                rec, hdr, iface = rec[known], hdr[known], iface[known]
            lts = np.array([i.linktype for i in self._ifaces] or [0], dtype=np.int64)
            scale = np.array([i.ts_scale for i in self._ifaces] or [1e-6])
            units = hdr[:, 1].astype(np.float64) * 4294967296.0 + hdr[:, 2].astype(np.float64)
            caplen = hdr[:, 3]
            blen = _u32(_gather(arr, rec + 4, 4), self._big)
            ok = caplen + 32 <= blen
            if not ok.all():
                self.error = "pcapng packet longer than its block"
            batches.append(
                PacketBatch(
                    arr,
                    (rec + 28)[ok],
                    caplen[ok],
                    np.maximum(hdr[:, 4], caplen)[ok],
                    (units * scale[iface])[ok],
                    lts[iface][ok],
                )
            )
        if spb and self._ifaces:
            rec = np.asarray(spb, dtype=np.int64)
            blen = _u32(_gather(arr, rec + 4, 4), self._big)
            wire = _u32(_gather(arr, rec + 8, 4), self._big)
            caplen = np.minimum(wire, blen - 16)
            lt = np.full(len(rec), self._ifaces[self._section_base].linktype if self._ifaces else 1)
            batches.append(PacketBatch(arr, rec + 12, caplen, wire, np.zeros(len(rec)), lt))
        return _concat(batches), pos

    def _interface(self, buf: bytes, pos: int, blen: int) -> None:
        """An Interface Description Block: link type and timestamp resolution."""
        fmt = ">" if self._big else "<"
        linktype = struct.unpack_from(fmt + "H", buf, pos + 8)[0]
        scale = 1e-6
        opt = pos + 16
        end = pos + blen - 4
        for _ in range(64):  # bounded: options are few
            if opt + 4 > end:
                break
            code, length = struct.unpack_from(fmt + "HH", buf, opt)
            if code == 0:
                break
            if code == 9 and length >= 1:  # if_tsresol
                v = buf[opt + 4]
                scale = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
            opt += 4 + ((length + 3) & ~3)
        self._ifaces.append(_Interface(linktype, scale))


def _concat(batches: list[PacketBatch]) -> PacketBatch:
    if len(batches) == 1:
        return batches[0]
    buf = batches[0].buf
    return PacketBatch(
        buf,
        np.concatenate([b.off for b in batches]),
        np.concatenate([b.caplen for b in batches]),
        np.concatenate([b.wirelen for b in batches]),
        np.concatenate([b.ts for b in batches]),
        np.concatenate([b.linktype for b in batches]),
    )


CHUNK_BYTES = 8 * 1024 * 1024


def read_capture(
    path: str | Path, stream: PcapStream | None = None, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[PacketBatch]:
    """Packet batches of a pcap/pcapng file, read in big chunks.

    A truncated or corrupt file yields every packet up to the last good record, then logs
    a warning with the count; ``stream.error`` and ``stream.bad_bytes`` keep the details.
    """
    stream = stream if stream is not None else PcapStream()
    with open(path, "rb") as fh:
        while True:
            data = fh.read(chunk_bytes)
            if not data:
                break
            batch = stream.feed(data)
            if len(batch):
                yield batch
            if stream.failed:
                break
    stream.close()
    if stream.error:
        log.warning(
            "capture read up to the last good packet path=%s packets=%d unread_bytes=%d reason=%s",
            path,
            stream.packets,
            stream.bad_bytes,
            stream.error,
        )
