"""A bounded on-disk spool of bus messages, replayed oldest first when the bus returns.

One file per message (``<sequence>.msg``) so that a crash loses at most the file being
written and a restarted collector replays what the previous one spooled. Each file holds a
small header (topic, partition, key, flow rows) and the message value unchanged. When the
next message would exceed ``max_bytes`` it is refused and the caller counts the loss.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("flowwarden.collector.spool")

_HEAD = struct.Struct(">4sHiiI")  # magic, topic length, partition (-1: none), rows, key length (+1: None)
_MAGIC = b"FWS1"


@dataclass(frozen=True)
class SpooledMessage:
    seq: int
    topic: str
    value: bytes
    key: bytes | None
    partition: int | None
    rows: int


class Spool:
    """Messages waiting for the bus, in arrival order, bounded in bytes."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seqs: list[int] = []
        self._sizes: dict[int, int] = {}
        self.bytes = 0
        self._next = 1

    def open(self) -> None:
        """Create the directory and index what an earlier run left (replayed first)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(self.dir.glob("*.msg")):
            try:
                seq = int(p.stem)
            except ValueError:
                continue
            size = p.stat().st_size
            self._seqs.append(seq)
            self._sizes[seq] = size
            self.bytes += size
        for p in self.dir.glob("*.tmp"):
            p.unlink(missing_ok=True)  # a write that never finished
        self._seqs.sort()
        self._next = (self._seqs[-1] + 1) if self._seqs else 1
        if self._seqs:
            log.info(
                "spool holds messages from an earlier run count=%d bytes=%d", len(self._seqs), self.bytes
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._seqs)

    def append(self, topic: str, value: bytes, key: bytes | None, partition: int | None, rows: int) -> bool:
        """Write one message at the end; False (nothing written) when the spool is full."""
        t = topic.encode()
        k = key or b""
        head = _HEAD.pack(
            _MAGIC, len(t), -1 if partition is None else partition, rows, 0 if key is None else len(k) + 1
        )
        data = head + t + k + value
        with self._lock:
            if self.bytes + len(data) > self.max_bytes:
                return False
            seq = self._next
            self._next += 1
            tmp = self.dir / f"{seq:016d}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.dir / f"{seq:016d}.msg")
            self._seqs.append(seq)
            self._sizes[seq] = len(data)
            self.bytes += len(data)
        return True

    def peek(self, n: int) -> list[SpooledMessage]:
        """The ``n`` oldest messages (left in place until :meth:`remove`)."""
        with self._lock:
            seqs = self._seqs[:n]
        out = []
        for seq in seqs:
            data = (self.dir / f"{seq:016d}.msg").read_bytes()
            magic, tlen, part, rows, klen = _HEAD.unpack_from(data, 0)
            if magic != _MAGIC:
                log.warning("spool file is not a spooled message, skipped seq=%d", seq)
                self.remove([seq])
                continue
            pos = _HEAD.size
            topic = data[pos : pos + tlen].decode()
            pos += tlen
            key = None if klen == 0 else data[pos : pos + klen - 1]
            pos += max(klen - 1, 0)
            out.append(SpooledMessage(seq, topic, data[pos:], key, None if part < 0 else part, rows))
        return out

    def remove(self, seqs: list[int]) -> None:
        with self._lock:
            gone = set(seqs)
            self._seqs = [s for s in self._seqs if s not in gone]
            for s in gone:
                self.bytes -= self._sizes.pop(s, 0)
                (self.dir / f"{s:016d}.msg").unlink(missing_ok=True)
