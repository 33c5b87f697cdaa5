"""`podsys check parse KIND FILE` on input that is not KIND's output: every kind answers exit 2
with one line naming the file, never a verdict, a SKIP or a traceback; memory stays bounded."""

import io
import os

import pytest

from podsys.checks.registry import PARSE_KINDS
from podsys.checks.saved_output import MAX_BYTES, read_saved_output
from tests.unit.checks.helpers import FIXTURES
from tests.conftest import PeakMemory, invoke


# one real sample per kind: fed to every other kind, it is junk there
SAMPLES = {
    "nccl": "nccl_all_reduce_8xh100_single_node.txt", "perftest": "ib_write_bw_ndr_gbits.txt", "ibstat": "ibstat_8x_ndr_healthy.txt",
    "ib-counters": "ib_counters_symbol_errors.txt", "nvidia-smi-topo": "nvidia_smi_topo_8xh100_healthy.txt",
    "nvidia-smi-query": "nvidia_smi_query_8xh100_healthy.csv", "nvidia-smi-q": "nvidia_smi_q_8xh100_healthy.txt",
    "nvidia-smi-nvlink": "nvidia_smi_nvlink_s_inactive.txt", "dcgmi-diag": "dcgmi_diag_r2_pass_dcgm3.txt",
    "nvbandwidth": "nvbandwidth_8xh100_healthy.txt", "dmesg": "dmesg_clean.txt", "lspci": "lspci_acs_enabled.txt",
    "modules": "proc_modules_no_peermem.txt", "gpudirect": "versions_raw_gpudirect_dmabuf.txt", "prometheus-targets": "prometheus_targets_one_down.json",
}

JUNK = {
    "empty": b"",
    "blank lines": b"\n\n   \n\t\n",
    "binary": bytes(range(256)) * 64,
    "png": b"\x89PNG\r\n\x1a\n" + bytes(4096),
    "latin-1 garbage": bytes(range(0x80, 0x100)) * 40,
    "prose": b"It was a bright cold day in April, and the clocks were striking thirteen.\n" * 50,
    "passwd": b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" * 20,
    "services": b"ssh             22/tcp                          # SSH Remote Login Protocol\nsmtp            25/tcp          mail\n" * 20,
    "csv": b"name,size,count\nalpha,1,2\nbeta,3,4\n",
    "json": b'{"status": "ok", "items": [1, 2, 3]}\n',
    "yaml": b"cluster:\n  name: test\n  nodes: 3\nkey: value\n",
    "command not found": b"bash: nvidia-smi: command not found\n",
}


def check_parse(*args, input: str | None = None):
    return invoke("check", "parse", *args, input=input)


def assert_one_clear_line(result, name):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_every_kind_has_a_sample():
    assert sorted(SAMPLES) == sorted(PARSE_KINDS)


@pytest.mark.parametrize("junk", sorted(JUNK))
@pytest.mark.parametrize("kind", sorted(PARSE_KINDS))
def test_junk_is_bad_input_for_every_kind(tmp_path, kind, junk):
    path = tmp_path / f"{junk.replace(' ', '_')}.txt"
    path.write_bytes(JUNK[junk])
    for profile in ([], ["--profile", "hgx-h100-8gpu"]):  # without a profile too: junk must not become a SKIP
        assert_one_clear_line(check_parse(kind, str(path), *profile), str(path))


@pytest.mark.parametrize("kind", sorted(PARSE_KINDS))
def test_another_tools_output_is_bad_input(kind):
    for other, name in SAMPLES.items():
        result = check_parse(kind, str(FIXTURES / name), "--profile", "hgx-h100-8gpu")
        if other == kind:
            assert result.exit_code in (0, 1), result.output
        else:
            assert_one_clear_line(result, name)


@pytest.mark.parametrize("kind", ["dmesg", "modules", "ib-counters"])
def test_junk_on_stdin_is_bad_input(kind):
    result = check_parse(kind, "-", input=JUNK["prose"])
    assert_one_clear_line(result, "stdin")


def test_line_oriented_kinds_name_the_bad_line(tmp_path):
    path = tmp_path / "modules.txt"
    path.write_text("Module                  Size  Used by\nnvidia_peermem         16384  0\nthis is not a module line\n")
    result = check_parse("modules", str(path))
    assert_one_clear_line(result, f"{path}:3")


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.log"
    with path.open("wb") as f:  # 50 MB of text lines
        line = b"[ 1.000000] usb 1-1: new high-speed USB device number 2 using xhci_hcd\n"
        block = line * (1 << 14)
        for _ in range((50 << 20) // len(block) + 1):
            f.write(block)
    assert path.stat().st_size > 50 << 20
    with PeakMemory() as measured:
        result = check_parse("dmesg", str(path))
    assert_one_clear_line(result, str(path))
    assert "MiB" in result.output and measured.peak < 8 << 20, measured.peak


class EndlessPipe(io.RawIOBase):
    """A pipe that keeps sending log lines (50 MB of them): no size to look at beforehand."""

    def __init__(self, total: int):
        self.left = total

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = (b"x" * 79 + b"\n") * (n // 80) + b"x" * (n % 80)
        self.left -= n
        return n


def test_a_huge_pipe_is_cut_off_with_memory_bounded():
    with pytest.raises(ValueError, match="more than the 16.0 MiB"), PeakMemory() as measured:
        read_saved_output(io.BufferedReader(EndlessPipe(50 << 20)))
    assert measured.peak < MAX_BYTES * 3 // 2 < 50 << 20, measured.peak  # the limit plus the buffer's growth, not the 50 MB sent


def test_a_real_output_within_the_limit_is_read_whole():
    text = (FIXTURES / "dmesg_clean.txt").read_text()
    assert read_saved_output(io.BytesIO(text.encode())) == text


def test_directory_is_one_line(tmp_path):
    assert_one_clear_line(check_parse("dmesg", str(tmp_path)), str(tmp_path))
    assert os.path.isdir(tmp_path)
