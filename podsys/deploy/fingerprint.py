"""The site certificate's fingerprint, from a deploy's Ansible log (web_tls shows it in a debug
task), so `podsys deploy` can print it for users to compare with what their browser shows."""

from __future__ import annotations

import re
from pathlib import Path

FINGERPRINT_RE = re.compile(r"site certificate SHA-256 fingerprint: ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})")


def site_fingerprint(log_text: str) -> str | None:
    """The last fingerprint web_tls reported, or None (no web layer, or the task did not run)."""
    found = FINGERPRINT_RE.findall(log_text)
    return found[-1] if found else None


def site_fingerprint_line(log_file: Path) -> str | None:
    try:
        fingerprint = site_fingerprint(log_file.read_text(errors="replace"))
    except OSError:
        return None
    return f"site certificate SHA-256 fingerprint: {fingerprint}" if fingerprint else None
