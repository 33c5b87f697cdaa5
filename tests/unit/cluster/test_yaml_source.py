"""podsys.cluster.yaml_source: hostile YAML is refused with the line that caused it, within
a bound on work and memory that is a limit in the loader (not a timing)."""

from __future__ import annotations


import pytest

from podsys.cluster.yaml_source import MAX_DEPTH, MAX_FILE_BYTES, load_yaml, load_yaml_file
from podsys.errors import InputError
from tests.conftest import PeakMemory, invoke

# The classic "billion laughs": nine levels of nine aliases, 9**9 (387 million) leaves.
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(ord('b') + i)}: &{chr(ord('b') + i)} [{', '.join(['*' + chr(ord('a') + i)] * 9)}]\n" for i in range(8)
)
# A bomb whose leaves are mappings, twelve aliases a level.
LIST_BOMB = "a: &a {x: 1, y: 2, z: 3, w: 4}\n" + "".join(
    f"{chr(ord('b') + i)}: &{chr(ord('b') + i)} [{', '.join(['*' + chr(ord('a') + i)] * 12)}]\n" for i in range(7)
)

LIMIT_BYTES = 100 * 1024 * 1024


def refused(text: str, file: str = "m.yaml") -> tuple[InputError, int, float]:
    """Load `text`; return the error, peak traced memory (bytes) and seconds taken."""
    with pytest.raises(InputError) as info, PeakMemory() as measured:
        load_yaml(text, file)
    return info.value, measured.peak, measured.seconds


# Line 7 is where an alias first stands for more than the limit on its own (the 6th level).
@pytest.mark.parametrize("text, line", [(BILLION_LAUGHS, 7), (LIST_BOMB, 7)], ids=["billion-laughs", "list-bomb"])
def test_alias_bomb_is_refused_within_memory_bound(text, line):
    error, peak, elapsed = refused(text)
    assert peak < LIMIT_BYTES, f"peak {peak / 2**20:.1f} MiB"
    (problem,) = error.problems
    assert problem.line == line and "alias bomb" in problem.message
    print(f"bomb refused in {elapsed * 1000:.0f} ms, peak {peak / 2**20:.2f} MiB")


def test_recursive_alias_is_refused():
    (problem,) = refused("a: &a [x, *a]\n")[0].problems
    assert problem.line == 1 and "recursive" in problem.message


def test_deep_nesting_is_refused_at_its_line():
    text = "a:\n" + "".join(" " * (2 * i + 2) + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + " " * 200 + "x\n"
    (problem,) = refused(text)[0].problems
    assert "nesting deeper than" in problem.message and problem.line is not None and problem.line > MAX_DEPTH - 5


def test_deep_flow_nesting_does_not_reach_python_recursion_limit():
    error, peak, _ = refused("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nesting deeper than" in error.problems[0].message and error.problems[0].line == 1
    assert peak < LIMIT_BYTES


def test_deep_nesting_built_from_aliases_is_refused():
    text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, MAX_DEPTH + 10))
    (problem,) = refused(text)[0].problems
    assert "deeper than" in problem.message and problem.line is not None


def test_anchors_that_are_merely_reused_are_fine():
    data, _ = load_yaml("base: &b {disk: /dev/sda}\ngroups: [*b, *b, *b]\n", "m.yaml")
    assert data["groups"] == [{"disk": "/dev/sda"}] * 3


@pytest.mark.parametrize("text, line, fragment", [
    ("a: 1\n1: x\n", 2, "'1' is read as a number"),
    ("a: 1\n? [x, y]\n: z\n", 2, "not a list"),
    ("a: 1\nyes: x\n", 2, "'yes' is read as a boolean"),
    ("nodes:\n  gpu001: {}\n  002: {}\n", 3, "'002' is read as a number"),
])
def test_mapping_key_that_is_not_a_string_points_at_its_own_line(text, line, fragment):
    (problem,) = refused(text)[0].problems
    assert problem.line == line and fragment in problem.message


def test_tab_indentation_names_the_line_and_says_why():
    (problem,) = refused("a:\n  b: 1\n\tc: 2\n")[0].problems
    assert problem.line == 3 and "never tabs" in problem.message


def test_control_character_names_its_line():
    (problem,) = refused("a: 1\nb: \x07bell\n")[0].problems
    assert problem.line == 2 and "not allowed" in problem.message


@pytest.mark.parametrize("content, line, fragment", [
    (b"a: 1\nb: caf\xe9\n", 2, "not UTF-8 text (byte 0xe9)"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", 1, "binary data"),
    (b"a: 1\n\nb: \x00\x01\x02", 3, "binary data"),
])
def test_non_utf8_and_binary_files_name_the_line(tmp_path, content, line, fragment):
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_yaml_file(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(path), line) and fragment in problem.message


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "m.yaml"
    with path.open("wb") as handle:  # sparse: 50 MB that cost no disk
        handle.truncate(50 * 1024 * 1024)
    with pytest.raises(InputError) as info, PeakMemory() as measured:
        load_yaml_file(path)
    assert "too large" in info.value.problems[0].message and str(MAX_FILE_BYTES) in info.value.problems[0].message
    assert measured.peak < 1024 * 1024


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(InputError) as info:
        load_yaml_file(tmp_path)
    assert "is a directory" in info.value.problems[0].message


@pytest.mark.parametrize("command", [["validate"], ["render"], ["check"], ["status"], ["deploy"], ["power", "status", "x", "-m"]])
@pytest.mark.parametrize("kind", ["bomb", "binary", "missing"])
def test_every_command_refuses_a_bad_manifest_with_exit_2(tmp_path, command, kind):
    path = tmp_path / "cluster.yaml"
    if kind == "bomb":
        path.write_text(BILLION_LAUGHS)
    elif kind == "binary":
        path.write_bytes(b"\x7fELF\x02\x01\x01\x00" * 64)
    result = invoke(*command, path)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}"), result.output
    assert "Traceback" not in result.output
