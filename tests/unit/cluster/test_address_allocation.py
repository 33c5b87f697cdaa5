from ipaddress import IPv4Address, IPv4Network

import pytest

from podsys.cluster.address_allocation import GroupRequest, allocate_addresses, same_offset
from podsys.cluster.hostlists import expand_hosts


def ip(text: str) -> int:
    return int(IPv4Address(text))


def names(allocation) -> dict[str, str]:
    return {k: str(IPv4Address(v)) for k, v in allocation.addresses.items()}


NET = IPv4Network("10.10.0.0/16")


def test_allocation_without_start_skips_reserved():
    alloc = allocate_addresses(NET, [GroupRequest(0, expand_hosts("n[1-3]"))], {ip("10.10.0.2"): "the head"})
    assert alloc.problems == []
    assert names(alloc) == {"n1": "10.10.0.1", "n2": "10.10.0.3", "n3": "10.10.0.4"}


def test_start_address_running_into_reserved_is_an_error_naming_both():
    # Issue 11: a group with an explicit start owns its range; it is never silently shifted.
    alloc = allocate_addresses(
        NET, [GroupRequest(0, expand_hosts("n[1-3]"), ip("10.10.1.1"), label="group 'n'")], {ip("10.10.1.2"): "the head"}
    )
    assert [(loc, msg) for loc, msg in alloc.problems] == [
        (("start", 0), "start_address 10.10.1.1 of group 'n' (3 hosts) runs into the head at 10.10.1.2; "
                       "move the start address or that address")]


def test_start_address_inside_another_groups_range_names_both():
    alloc = allocate_addresses(NET, [GroupRequest(0, expand_hosts("a[1-4]"), ip("10.10.1.1"), label="group 'a'"),
                                     GroupRequest(1, expand_hosts("b[1-4]"), ip("10.10.1.3"), label="group 'b'")], {})
    assert len(alloc.problems) == 1
    locator, message = alloc.problems[0]
    assert locator == ("start", 1) and "runs into a3 (group 'a') at 10.10.1.3" in message


@pytest.mark.parametrize("start, fragment", [("10.10.0.0", "network address"), ("10.10.255.255", "broadcast address"),
                                             ("10.11.0.1", "outside")])
def test_start_address_never_network_or_broadcast(start, fragment):
    alloc = allocate_addresses(NET, [GroupRequest(0, ["n1"], ip(start))], {})
    assert alloc.problems and alloc.problems[0][0] == ("start", 0) and fragment in alloc.problems[0][1]


def test_growing_group_keeps_existing_addresses():
    first = allocate_addresses(NET, [GroupRequest(0, expand_hosts("gpu[01-04]"), ip("10.10.1.1"))], {})
    # An admin pins gpu05 onto what would have been free space, and grows the group; the earlier
    # nodes keep their addresses because the previous allocation is honoured first.
    grown = allocate_addresses(
        NET,
        [GroupRequest(0, expand_hosts("gpu[00-08]"), ip("10.10.1.1"))],
        {},
        previous=first.addresses,
    )
    got = names(grown)
    for host, addr in names(first).items():
        assert got[host] == addr
    assert got["gpu00"] == "10.10.1.5"  # new hosts take the next free addresses
    assert len(set(got.values())) == 9


def test_removed_node_does_not_shift_others():
    first = allocate_addresses(NET, [GroupRequest(0, expand_hosts("n[1-4]"), ip("10.10.1.1"))], {})
    second = allocate_addresses(NET, [GroupRequest(0, ["n1", "n3", "n4"], ip("10.10.1.1"))], {}, previous=first.addresses)
    assert names(second) == {"n1": "10.10.1.1", "n3": "10.10.1.3", "n4": "10.10.1.4"}


def test_group_that_does_not_fit():
    small = IPv4Network("10.10.0.0/28")  # 14 usable
    alloc = allocate_addresses(small, [GroupRequest("g", expand_hosts("n[1-20]"), ip("10.10.0.1"))], {})
    assert len(alloc.problems) == 1
    locator, message = alloc.problems[0]
    assert locator == ("fit", "g")
    assert "20 hosts" in message and "do not fit" in message and "6 left" in message


def test_pinned_address_collisions_and_outside():
    alloc = allocate_addresses(
        NET,
        [GroupRequest(0, ["a", "b", "c"], ip("10.10.1.1"), pinned={"a": ip("10.10.0.1"), "b": ip("10.99.0.1")})],
        {ip("10.10.0.1"): "the head (mu01)"},
    )
    messages = [m for _, m in alloc.problems]
    assert any("collides with the head (mu01)" in m for m in messages)
    assert any("outside 10.10.0.0/16" in m for m in messages)


def test_same_offset_follows_provision_host_part():
    assert same_offset(ip("10.10.1.7"), NET, IPv4Network("10.20.0.0/16")) == ip("10.20.1.7")
    assert same_offset(ip("10.10.1.7"), NET, IPv4Network("10.20.0.0/24")) is None
