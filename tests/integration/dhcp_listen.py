"""Wait for a DHCP request from one MAC on a bridge; print it as JSON ({"seen": null} on timeout).

Run inside the namespace holding the bridge (`ip netns exec NS python3 dhcp_listen.py br0 MAC
SECONDS`). A raw packet socket sees every frame the bridge forwards, answered or not, so the
VMs' firmware can be heard before any DHCP server exists. The fields read are RFC 2131's BOOTP
header (op, chaddr) and option 53 (message type) and 60 (vendor class, "PXEClient:..." from
PXE firmware)."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
MAGIC = b"\x63\x82\x53\x63"
MESSAGE_TYPES = {1: "DISCOVER", 3: "REQUEST"}


def dhcp_request(frame: bytes) -> dict | None:
    """The client MAC, message type and vendor class of a DHCP client frame, else None."""
    if len(frame) < 14 + 20 + 8 + 240 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 17:  # UDP
        return None
    udp = 14 + ihl
    if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 67:
        return None
    bootp = frame[udp + 8:]
    if bootp[0] != 1 or bootp[236:240] != MAGIC:
        return None
    options, i = {}, 240
    while i < len(bootp) and bootp[i] != 255:
        if bootp[i] == 0:
            i += 1
            continue
        code, length = bootp[i], bootp[i + 1]
        options[code] = bootp[i + 2:i + 2 + length]
        i += 2 + length
    kind = options.get(53, b"\0")[0]
    return {
        "mac": ":".join(f"{b:02x}" for b in bootp[28:34]),
        "type": MESSAGE_TYPES.get(kind, str(kind)),
        "vendor_class": options.get(60, b"").decode(errors="replace"),
    }


def main(argv: list[str]) -> int:
    iface, mac, seconds = argv[1], argv[2].lower(), float(argv[3])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((iface, 0))
    print("listening", flush=True, file=sys.stderr)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            frame = sock.recv(65535)
        except socket.timeout:
            break
        seen = dhcp_request(frame)
        if seen and seen["mac"] == mac:
            print(json.dumps({"seen": seen}))
            return 0
    print(json.dumps({"seen": None}))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
