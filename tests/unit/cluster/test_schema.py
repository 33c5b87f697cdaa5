"""podsys.cluster.schema holds the facts other modules take from it: the supported OS
releases and the layers. These tests pin that nothing else keeps its own copy."""

from __future__ import annotations

import typing

from podsys.bundle.apt import TARGETS
from podsys.cluster.matrix import load_matrix
from podsys.cluster.schema import LAYERS, SUPPORTED_OS, SUPPORTED_OS_KEYS, Manifest, NodeGroup, OSSpec


def test_layer_literals_are_the_layer_list():
    manifest_layers = typing.get_args(typing.get_args(Manifest.model_fields["layers"].annotation)[0])
    group_layers = typing.get_args(typing.get_args(typing.get_args(NodeGroup.model_fields["layers"].annotation)[0])[0])
    assert manifest_layers == group_layers == LAYERS


def test_os_distro_literal_is_the_supported_list():
    assert typing.get_args(OSSpec.model_fields["distro"].annotation) == tuple(SUPPORTED_OS)
    assert SUPPORTED_OS_KEYS == ("ubuntu-22.04", "ubuntu-24.04", "rocky-9", "debian-12")


def test_matrix_stacks_pin_only_supported_releases():
    for stack in load_matrix().stacks.values():
        assert set(stack.os) <= set(SUPPORTED_OS_KEYS), stack.id


def test_bundle_targets_are_supported_releases():
    assert set(TARGETS) <= set(SUPPORTED_OS_KEYS)
