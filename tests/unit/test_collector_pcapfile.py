"""Reading pcap/pcapng: formats, chunking, truncation and corruption."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from flowwarden.collectors.pcapfile import CaptureFormatError, PacketBatch, PcapStream, read_capture

FRAME = bytes(range(60))


def pcap(
    frames: list[tuple[float, bytes]], *, big: bool = False, nano: bool = False, linktype: int = 1
) -> bytes:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, data in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out += struct.pack(e + "IIII", sec, frac, len(data), len(data) + 4) + data
    return out


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def pcapng(frames: list[tuple[int, float, bytes]]) -> bytes:
    """Two interfaces: 0 Ethernet (microseconds), 1 raw IP (nanoseconds: if_tsresol=9)."""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += _block(1, struct.pack("<HHI", 1, 0, 65535))
    out += _block(
        1, struct.pack("<HHI", 101, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    )
    for iface, ts, data in frames:
        units = round(ts * (1e9 if iface == 1 else 1e6))
        out += _block(
            6, struct.pack("<IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), len(data)) + data
        )
    out += _block(5, struct.pack("<IIII", 0, 0, 0, 0))  # an interface statistics block: skipped
    return out


def packets(batches: list[PacketBatch]) -> list[tuple[float, bytes, int, int]]:
    out = []
    for b in batches:
        for off, cap, wire, ts, lt in zip(b.off, b.caplen, b.wirelen, b.ts, b.linktype, strict=True):
            out.append((round(float(ts), 6), b.buf[off : off + cap].tobytes(), int(wire), int(lt)))
    return out


def test_pcap_variants_read_the_same(tmp_path: Path) -> None:
    frames = [(1700000000.25, FRAME), (1700000001.5, FRAME[:40])]
    results = []
    for big in (False, True):
        for nano in (False, True):
            p = tmp_path / f"{big}{nano}.pcap"
            p.write_bytes(pcap(frames, big=big, nano=nano))
            results.append(packets(list(read_capture(p))))
    assert results[0] == [(1700000000.25, FRAME, 64, 1), (1700000001.5, FRAME[:40], 44, 1)]
    assert all(r == results[0] for r in results)


def test_pcapng_interfaces_keep_their_link_type_and_resolution(tmp_path: Path) -> None:
    p = tmp_path / "x.pcapng"
    p.write_bytes(pcapng([(0, 1700000000.5, FRAME), (1, 1700000002.123456, FRAME[:30])]))
    got = packets(list(read_capture(p)))
    assert got == [(1700000000.5, FRAME, 60, 1), (1700000002.123456, FRAME[:30], 30, 101)]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_any_chunking_of_the_stream_gives_the_same_packets(chunk: int) -> None:
    data = pcap([(1.0 + i, FRAME[: 20 + i]) for i in range(30)])
    s = PcapStream()
    batches = [s.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    s.close()
    assert s.error == ""
    assert [p[1] for p in packets(batches)] == [FRAME[: 20 + i] for i in range(30)]


def test_truncated_capture_is_read_to_the_last_good_packet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = pcap([(1.0, FRAME), (2.0, FRAME), (3.0, FRAME)])
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[:-10])
    s = PcapStream()
    got = packets(list(read_capture(p, s)))
    assert len(got) == 2
    assert "truncated" in s.error and s.bad_bytes == 16 + 60 - 10
    assert "last good packet" in caplog.text and "packets=2" in caplog.text


def test_corrupt_record_header_stops_with_the_count(tmp_path: Path) -> None:
    data = bytearray(pcap([(1.0, FRAME), (2.0, FRAME), (3.0, FRAME)]))
    second = 24 + 16 + 60
    data[second + 8 : second + 12] = struct.pack("<I", 10_000_000)
    p = tmp_path / "bad.pcap"
    p.write_bytes(bytes(data))
    s = PcapStream()
    got = list(read_capture(p, s))
    assert sum(len(b) for b in got) == 1
    assert "corrupt record header at byte 100" in s.error
    assert s.bad_bytes == len(data) - second


def test_not_a_capture_names_the_first_bytes() -> None:
    with pytest.raises(CaptureFormatError, match=r"not a pcap or pcapng capture \(first bytes 7f454c46"):
        PcapStream().feed(b"\x7fELF" + b"\0" * 40)


def test_empty_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    s = PcapStream()
    assert list(read_capture(p, s)) == []
    assert s.error == "empty capture: no pcap header"
    assert np.array_equal(PacketBatch.empty().off, np.zeros(0))
