"""A minimal DHCP client for tests: one DISCOVER, print the OFFER as JSON (or {"offer": null}).

Run inside a client network namespace (`ip netns exec NS python3 dhcp_probe.py IFACE MAC ...`).
It speaks what PXE firmware and iPXE send: option 93 (client architecture), option 60
("PXEClient:Arch:..."), and for iPXE option 77 user class "iPXE" plus option 175."""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

MAGIC = b"\x63\x82\x53\x63"


def discover_packet(mac: str, xid: int, arch: int | None, user_class: str | None) -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                         b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, chaddr, b"\0" * 64, b"\0" * 128)
    opts = bytearray(b"\x35\x01\x01")  # DHCPDISCOVER
    opts += bytes([55, 9, 1, 3, 6, 12, 15, 43, 60, 66, 67])  # parameter request list
    if arch is not None:
        opts += bytes([93, 2]) + struct.pack("!H", arch)
        vendor = f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()
        opts += bytes([60, len(vendor)]) + vendor
    if user_class:
        opts += bytes([77, len(user_class)]) + user_class.encode()
        opts += bytes([175, 3, 19, 1, 1])  # iPXE's feature encapsulation: HTTP supported
    opts += b"\xff"
    return header + MAGIC + bytes(opts)


def parse_reply(data: bytes, xid: int) -> dict | None:
    if len(data) < 240 or data[236:240] != MAGIC:
        return None
    op, _, _, _, rxid = struct.unpack("!BBBBI", data[:8])
    if op != 2 or rxid != xid:
        return None
    yiaddr = socket.inet_ntoa(data[16:20])
    siaddr = socket.inet_ntoa(data[20:24])
    sname = data[44:108].split(b"\0", 1)[0].decode(errors="replace")
    file_field = data[108:236].split(b"\0", 1)[0].decode(errors="replace")
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = data[i + 1]
        options[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    msg_type = options.get(53, b"\0")[0]
    bootfile = options.get(67, b"").split(b"\0", 1)[0].decode(errors="replace") or file_field
    return {
        "message_type": msg_type,
        "yiaddr": yiaddr,
        "siaddr": siaddr,
        "sname": sname,
        "file": bootfile,
        "hostname": options.get(12, b"").decode(errors="replace"),
        "router": socket.inet_ntoa(options[3]) if len(options.get(3, b"")) >= 4 else None,
        "netmask": socket.inet_ntoa(options[1]) if len(options.get(1, b"")) == 4 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("iface")
    parser.add_argument("mac")
    parser.add_argument("--arch", type=int, default=None, help="DHCP option 93 value (0 BIOS, 7 UEFI x64, 11 arm64)")
    parser.add_argument("--user-class", default=None, help="e.g. iPXE")
    parser.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args()
    xid = int.from_bytes(os.urandom(4), "big")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.bind(("0.0.0.0", 68))
    packet = discover_packet(args.mac, xid, args.arch, args.user_class)
    deadline = time.monotonic() + args.timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:  # retransmit like firmware does, in case the first was dropped
            sock.sendto(packet, ("255.255.255.255", 67))
            next_send = now + 1.0
        ready, _, _ = select.select([sock], [], [], max(0.05, min(next_send, deadline) - time.monotonic()))
        if ready:
            data, _ = sock.recvfrom(4096)
            reply = parse_reply(data, xid)
            if reply and reply["message_type"] == 2:
                print(json.dumps({"offer": reply}))
                return 0
    print(json.dumps({"offer": None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
