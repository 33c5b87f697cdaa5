"""The HTML report opens in a real headless Chromium without console errors, and a screenshot
shows the plots (saved as test-artifacts/report.png for people to look at)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from podsys.checks.report import write_report
from tests.report_samples import sample_findings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts"
CONSOLE = re.compile(r":CONSOLE[:(]")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium not installed (Debian package `chromium`, listed in .ci/apt-packages.txt)")


def open_in_chromium(page: Path, screenshot: Path, profile: Path, scale: float = 1.0) -> str:
    """Load the page headless with a fresh profile and no network features; return the browser
    log, where every page console message appears as an INFO:CONSOLE line."""
    browser = _chromium()
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
         "--window-size=1400,2400", f"--force-device-scale-factor={scale}", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if CONSOLE.search(line)]


def test_console_capture_sees_errors(tmp_path):
    """Control: the capture must see a console error when a page has one, or the next test proves nothing."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>console.error('podsys-probe'); missingFunction();</script></body></html>")
    lines = console_lines(open_in_chromium(page, tmp_path / "broken.png", tmp_path / "profile"))
    assert any("podsys-probe" in l for l in lines) and any("missingFunction" in l for l in lines)


def test_report_renders_without_console_errors_and_screenshot_shows_plots(tmp_path):
    paths = write_report(sample_findings(), tmp_path / "report", {"cluster": "pod01"})
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    log = open_in_chromium(paths["html"], screenshot, tmp_path / "profile")
    assert console_lines(log) == []
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (1400, 2400)
    # The plots are drawn in the verdict colours: no red/green/blue pixels means they did not
    # render. Counted on a quarter-scale rendering of the same page (a pure-Python PNG decode of
    # the full-size one would take half a minute).
    small = tmp_path / "small.png"
    assert console_lines(open_in_chromium(paths["html"], small, tmp_path / "profile-small", scale=0.25)) == []
    counts = _colour_counts(small.read_bytes(), {(0xC6, 0x28, 0x28): "fail", (0x2E, 0x8B, 0x57): "pass", (0x15, 0x65, 0xC0): "line"})
    assert counts["fail"] > 150 and counts["pass"] > 150 and counts["line"] > 10, counts


def _colour_counts(png: bytes, colours: dict) -> dict:
    import struct
    import zlib

    pos, idat, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type = header[:4]
    assert depth == 8 and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    counts = {name: 0 for name in colours.values()}
    previous = bytearray(stride)
    offset = 0
    for _ in range(height):
        ftype = raw[offset]
        line = bytearray(raw[offset + 1 : offset + 1 + stride])
        offset += 1 + stride
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        for x in range(0, stride, bpp):
            pixel = (line[x], line[x + 1], line[x + 2])
            for rgb, name in colours.items():
                if all(abs(p - q) <= 12 for p, q in zip(pixel, rgb)):
                    counts[name] += 1
        previous = line
    return counts
