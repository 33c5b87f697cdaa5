"""podsys.cluster.macs: the one MAC normaliser, unicast rule and MAC CSV reader (used by
validation and by `podsys discover` alike)."""

from __future__ import annotations

import pytest

from podsys.cluster.load import load_cluster
from podsys.cluster.macs import node_mac, normalise_mac, read_mac_csv
from podsys.errors import InputError
from podsys.provision import discover
from tests.unit.manifest_samples import VALID, write_manifest


@pytest.mark.parametrize("written", ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "5254.00ab.cd01", "525400abcd01"])
def test_normalise_accepts_the_usual_spellings(written):
    assert normalise_mac(written) == "52:54:00:ab:cd:01"


@pytest.mark.parametrize("written", ["52:54:00:ab:cd", "52:54-00:ab:cd:01", "52:54:00:ab:cd:0g", "", "x" * 10_000])
def test_normalise_refuses_malformed(written):
    with pytest.raises(ValueError) as info:
        normalise_mac(written)
    assert len(str(info.value)) < 200  # a huge value is cut short, not echoed whole


@pytest.mark.parametrize("mac, reason", [("00:00:00:00:00:00", "all zeros"), ("ff:ff:ff:ff:ff:ff", "broadcast"),
                                         ("01:00:5e:00:00:fb", "multicast"), ("33:33:00:00:00:01", "multicast")])
def test_node_mac_must_be_unicast(mac, reason):
    with pytest.raises(ValueError, match=reason):
        node_mac(mac)
    assert node_mac("02:00:00:00:00:01") == "02:00:00:00:00:01"  # locally administered unicast is fine


def test_comments_and_blank_lines_before_the_header(tmp_path):
    path = tmp_path / "macs.csv"
    path.write_text("# exported from the BMCs\n\n# 2026-11-28\nhostname,mac\ngpu001,b8:3f:d2:00:00:01\n\n"
                    "# spare\ngpu002,b8:3f:d2:00:00:02\n")
    table = read_mac_csv(path)
    assert table.problems == []
    assert [(r.line, r.host, r.mac) for r in table.rows] == [(5, "gpu001", "b8:3f:d2:00:00:01"),
                                                             (8, "gpu002", "b8:3f:d2:00:00:02")]


def test_each_bad_row_names_the_file_and_its_line(tmp_path):
    path = tmp_path / "macs.csv"
    path.write_text("hostname,mac\ngpu001,b8:3f:d2:00:00:01\ngpu002\ngpu003,01:00:5e:00:00:01\n"
                    "gpu004,zz\ngpu001,b8:3f:d2:00:00:09\nhostname,mac\n")
    table = read_mac_csv(path)
    assert [(p.file, p.line) for p in table.problems] == [(str(path), n) for n in (3, 4, 5, 6, 7)]
    assert "multicast" in table.problems[1].message and "listed twice (first on line 2)" in table.problems[3].message
    assert [r.host for r in table.rows] == ["gpu001"]  # a second header is a bad row, not a header


@pytest.mark.parametrize("content, line, fragment", [
    (b"hostname,mac\ngpu001,b8:3f:d2:00:00:01\ngpu00\xe9,b8:3f:d2:00:00:02\n", 3, "not UTF-8"),
    (b"hostname,mac\n\x00\x01\x02", 2, "binary data"),
])
def test_non_utf8_and_binary_csv_name_the_line(tmp_path, content, line, fragment):
    path = tmp_path / "macs.csv"
    path.write_bytes(content)
    (problem,) = read_mac_csv(path).problems
    assert (problem.file, problem.line) == (str(path), line) and fragment in problem.message


def test_oversized_csv_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "macs.csv"
    with path.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
    (problem,) = read_mac_csv(path).problems
    assert "far smaller" in problem.message


def test_manifest_with_a_commented_csv_validates(tmp_path):
    # Before: the reader only took a header on line 1, so this CSV failed as "malformed MAC 'mac'".
    macs = ("# gpu nodes\n\nhostname,mac\n" + "".join(f"gpu00{i},b8:3f:d2:00:00:0{i}\n" for i in range(1, 5)))
    cluster = load_cluster(write_manifest(tmp_path, VALID, macs))
    assert cluster.node("gpu004").mac == "b8:3f:d2:00:00:04"


def test_manifest_csv_with_a_non_utf8_byte_names_the_csv_line(tmp_path):
    path = write_manifest(tmp_path, VALID, None)
    (tmp_path / "gpu-macs.csv").write_bytes(b"hostname,mac\ngpu001,b8:3f:d2:00:00:01\ngpu\xff02,x\n")
    with pytest.raises(InputError) as info:
        load_cluster(path)
    assert any(p.file == str(tmp_path / "gpu-macs.csv") and p.line == 3 and "not UTF-8" in p.message
               for p in info.value.problems)


def test_discover_reads_the_same_csv_as_validation(tmp_path):
    from podsys.cluster.parse import parse_manifest
    from podsys.cluster.yaml_source import load_yaml_file

    macs = "# comment\nhostname,mac\ngpu001,b8:3f:d2:00:00:01\ngpu002,01:00:5e:00:00:01\n"
    path = write_manifest(tmp_path, VALID, macs)
    manifest = parse_manifest(*load_yaml_file(path))
    # The multicast row is not a MAC the manifest has: discovery still waits for gpu002.
    assert discover.known_macs(manifest, tmp_path) == {"b8:3f:d2:00:00:01": "gpu001"}
    assert discover.hosts_without_mac(manifest, tmp_path, "gpu") == ["gpu002", "gpu003", "gpu004"]


def test_a_macs_file_pointed_at_the_wrong_file_is_not_echoed(tmp_path):
    path = tmp_path / "shadow"
    path.write_text("root:$6$salt$hashhashhash:19000:0:99999:7:::\n")
    (problem,) = read_mac_csv(path).problems
    assert problem.line == 1 and "hashhash" not in problem.message and "expected 'hostname,mac'" in problem.message
