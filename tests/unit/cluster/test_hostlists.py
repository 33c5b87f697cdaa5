import pytest

from podsys.cluster.hostlists import HostlistError, collapse_hosts, count_hosts, expand_hosts


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("gpu[001-010,015]", [f"gpu{i:03d}" for i in range(1, 11)] + ["gpu015"]),
        ("a[1-2]-b[1-3]", ["a1-b1", "a1-b2", "a1-b3", "a2-b1", "a2-b2", "a2-b3"]),
        ("node1", ["node1"]),
        ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
        ("login1,login2", ["login1", "login2"]),
    ],
)
def test_expand_hosts(expression, expected):
    assert expand_hosts(expression) == expected


@pytest.mark.parametrize("expression", ["gpu[001-", "gpu[3-1]", "gpu[a-b]", "", "gpu[1-2],,x", "GPU_1", "gpu[1-2],"])
def test_expand_hosts_rejects_malformed(expression):
    with pytest.raises(HostlistError):
        expand_hosts(expression)


def test_collapse_round_trips():
    hosts = expand_hosts("gpu[001-010,015]")
    assert collapse_hosts(hosts) == "gpu[001-010,015]"


def test_hostlist_total_is_bounded_before_expanding():
    # Each part is under python-hostlist's own 100,000 cap; together they are not.
    with pytest.raises(HostlistError, match="expands to 400000 names"):
        expand_hosts(",".join(f"n{i}-[00000-99999]" for i in range(4)))
    assert count_hosts("a[1-2]-b[1-3],c") == 7
