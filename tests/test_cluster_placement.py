"""Placement: determinism, balance and minimal movement (pure, property-based)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.cluster.placement import HashRing

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
members_st = st.lists(names, min_size=1, max_size=8, unique=True)
channels_st = st.lists(names, min_size=1, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(members_st, channels_st)
def test_every_node_computes_the_same_owner_whatever_the_order(
    members: list[str], channels: list[str]
) -> None:
    forward = HashRing(members, vnodes=32)
    backward = HashRing(list(reversed(members)), vnodes=32)
    for channel in channels:
        owner = forward.owner(channel)
        assert owner in members
        assert owner == backward.owner(channel)


@settings(max_examples=60, deadline=None)
@given(members_st, channels_st, names)
def test_a_join_moves_channels_only_to_the_joiner(
    members: list[str], channels: list[str], joiner: str
) -> None:
    if joiner in members:
        return
    before = HashRing(members, vnodes=32)
    after = HashRing([*members, joiner], vnodes=32)
    for channel in channels:
        if after.owner(channel) != before.owner(channel):
            assert after.owner(channel) == joiner


@settings(max_examples=60, deadline=None)
@given(members_st, channels_st)
def test_a_leave_moves_only_the_leaver_s_channels(members: list[str], channels: list[str]) -> None:
    if len(members) < 2:
        return
    leaver = members[0]
    before = HashRing(members, vnodes=32)
    after = HashRing(members[1:], vnodes=32)
    for channel in channels:
        if before.owner(channel) != leaver:
            assert after.owner(channel) == before.owner(channel)


def test_ten_nodes_share_ten_thousand_channels_evenly_and_a_join_moves_a_fair_share() -> None:
    members = [f"node-{i}" for i in range(10)]
    channels = [f"channel-{i}" for i in range(10_000)]
    ring = HashRing(members)
    load = Counter(ring.owner(channel) for channel in channels)
    assert set(load) == set(members)
    assert max(load.values()) <= 1.10 * len(channels) / len(members)
    grown = HashRing([*members, "node-new"])
    moved = sum(1 for channel in channels if grown.owner(channel) != ring.owner(channel))
    assert moved <= 1.1 * len(channels) / (len(members) + 1)


def test_no_members_no_owner_and_vnodes_must_be_positive() -> None:
    assert HashRing([]).owner("any") is None
    with pytest.raises(ValueError, match="vnodes"):
        HashRing(["a"], vnodes=0)
