"""A user-space tunnel endpoint for kernels without the ipip, gre and geneve modules.

This machine's kernel has VXLAN built in but not IP-in-IP, GRE or Geneve (and no module
loading), so the lab runs the encapsulation in user space, as boringtun or OVS's
user-space datapath do: a TUN (IP payloads) or TAP (Ethernet payloads) device carries the
pods' packets; this process wraps each in the overlay's real header and sends it to the
peer node over the underlay (a raw IP socket of protocol 4 or 47, or a UDP socket on
6081), and unwraps what arrives. The packets on the underlay are exactly what the kernel's
tunnel would send (outer IPv4, then the RFC 2003 / 2784+2890 / 8926 headers).

Run in a node namespace: ``python3 tunneld.py KIND LOCAL REMOTE DEV LIFETIME_S``; the loop
ends after ``LIFETIME_S`` (the lab also kills it when it closes). Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_TAP, IFF_NO_PI = 0x0001, 0x0002, 0x1000
GRE_KEY = 7
GENEVE_VNI = 42
GENEVE_PORT = 6081


def open_device(name: str, tap: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI))
    return fd


def encap(kind: str, inner: bytes) -> bytes:
    if kind == "ipip":
        return inner  # the kernel adds the outer IPv4 header (protocol 4)
    if kind == "gre":
        return struct.pack(">HH", 0, 0x0800 if inner[0] >> 4 == 4 else 0x86DD) + inner
    if kind == "gretap":
        return struct.pack(">HHI", 0x2000, 0x6558, GRE_KEY) + inner  # K flag and a key
    # Geneve with one 8-byte option (class 0x0102, type 0x80), Ethernet payload.
    opt = struct.pack(">HBB", 0x0102, 0x80, 1) + b"\xca\xfe\xf0\x0d"
    return struct.pack(">BBHI", len(opt) // 4, 0, 0x6558, GENEVE_VNI << 8) + opt + inner


def decap(kind: str, data: bytes) -> bytes:
    if kind == "geneve":
        if len(data) < 8 or data[0] >> 6:
            return b""
        return data[8 + (data[0] & 0x3F) * 4 :]
    ihl = (data[0] & 0x0F) * 4  # raw sockets deliver the outer IPv4 header
    payload = data[ihl:]
    if kind == "ipip":
        return payload
    if len(payload) < 4:
        return b""
    flags = struct.unpack_from(">H", payload)[0]
    skip = 4 + 4 * (((flags >> 15) & 1) + ((flags >> 13) & 1) + ((flags >> 12) & 1))
    return payload[skip:]


def main() -> None:
    kind, local, remote, dev, lifetime = sys.argv[1:6]
    fd = open_device(dev, tap=kind in ("gretap", "geneve"))
    if kind == "geneve":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((local, GENEVE_PORT))
        dest: tuple[str, int] = (remote, GENEVE_PORT)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4 if kind == "ipip" else 47)
        sock.bind((local, 0))
        dest = (remote, 0)
    print("ready", flush=True)
    deadline = time.monotonic() + float(lifetime)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd, sock.fileno()], [], [], 0.5)
        if fd in ready:
            sock.sendto(encap(kind, os.read(fd, 65535)), dest)
        if sock.fileno() in ready:
            data, (src, _port) = sock.recvfrom(65535)
            inner = decap(kind, data) if src == remote else b""
            if inner:
                os.write(fd, inner)


if __name__ == "__main__":
    main()
