"""Public SSH host keys shaped as OpenSSH writes them (the blob starts with its own type name),
made up: what the deploy ramdisk reports and the head checks and keeps."""

from __future__ import annotations

import base64
import struct


def host_key(key_type: str, seed: int = 1, blob_type: str | None = None) -> str:
    """`<type> <base64>`; blob_type makes a line whose two halves disagree."""
    name = (blob_type or key_type).encode()
    body = bytes((seed + i) % 256 for i in range(32))
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", len(body)) + body
    return f"{key_type} {base64.b64encode(blob).decode()}"


ED25519 = host_key("ssh-ed25519")
ECDSA = host_key("ecdsa-sha2-nistp256")
RSA = host_key("ssh-rsa")
