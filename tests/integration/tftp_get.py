"""A minimal TFTP client (RFC 1350, octet mode) for hosts without curl or busybox:
`python3 tftp_get.py SERVER FILE OUT` fetches FILE and prints its size and sha256."""

from __future__ import annotations

import hashlib
import socket
import struct
import sys


def tftp_get(server: str, name: str, timeout: float = 5.0) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.sendto(struct.pack("!H", 1) + name.encode() + b"\0octet\0", (server, 69))
    data, expected = bytearray(), 1
    while True:
        packet, peer = sock.recvfrom(4 + 65464)
        opcode, block = struct.unpack("!HH", packet[:4])
        if opcode == 5:  # ERROR
            message = packet[4:].split(b"\0", 1)[0].decode(errors="replace")
            raise OSError(f"TFTP error {block}: {message}")
        if opcode != 3:
            raise OSError(f"unexpected TFTP opcode {opcode}")
        if block == expected:
            data += packet[4:]
            expected = (expected + 1) % 65536
        sock.sendto(struct.pack("!HH", 4, block), peer)  # the transfer continues from the server's new port
        if block == (expected - 1) % 65536 and len(packet) - 4 < 512:
            return bytes(data)


def main() -> int:
    server, name, out = sys.argv[1:4]
    payload = tftp_get(server, name)
    with open(out, "wb") as fh:
        fh.write(payload)
    print(len(payload), hashlib.sha256(payload).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
