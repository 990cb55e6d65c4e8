"""A checkpoint's shortcuts write what the plain encoding writes.

A busy channel's checkpoint keeps work from one checkpoint to the next: its
newest send answers (``SentResults.newest`` shifts the list it gave last by
the answers put since), the answers' JSON text (``sent_json``: the window
keeps it, and the window shifted from it starts from it), and the
rest of its state is encoded by hand (``state_rest``) instead of by cattrs.
Each shortcut (and the inbound ids, written by msgspec) is compared here
with the plain way over generated histories and states: the text must be
the same byte for byte, and nothing kept may outlive the change that makes
it wrong (a put after a checkpoint, a key put again, a restore, an answer
never written behind ones that were).
"""

from __future__ import annotations

import gc
import itertools
import json
import math
from collections import OrderedDict
from datetime import datetime
from typing import Any

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.backoff import BackoffState
from actors.breaker import BreakerState, CircuitBreakerState
from actors.channel.durable import (
    SENT_KEPT_DURABLE,
    ChannelState,
    _active_shifted,
    _later_s,
    _shift_backoff,
    _shift_limiter,
    export_state,
    restore_state,
)
from actors.channel.state import (
    ChannelMemory,
    ChannelSettings,
    RecentIds,
    SentResults,
    SentWindow,
)
from actors.ratelimit import CompositeLimiterState, GCRAState, KeyedLimiterState
from providers.base import UNLIMITED, OutboundMessage, PlatformLimits, SessionState
from providers.operations import operation_print
from runtime.store import codec
from runtime.store.codec import (
    converter,
    decode_state,
    dumps,
    encode_state,
    seen_json,
    sent_json,
    state_from_text,
    state_rest,
    state_text,
    storable,
)
from tests.test_store import json_objects

LIMITS = PlatformLimits(
    per_channel_rate=UNLIMITED,
    per_channel_burst=int(UNLIMITED),
    per_peer_rate=UNLIMITED,
    per_peer_burst=int(UNLIMITED),
    max_text_length=4096,
)


# --- the plain ways ------------------------------------------------------------------------


def plain_rest(state: ChannelState) -> dict[str, Any]:
    """What state_text encoded the rest of the state with before: cattrs, whole."""
    encoded: dict[str, Any] = converter.unstructure(
        attrs.evolve(state, dead_letters=(), sent=SentWindow())
    )
    del encoded["dead_letters"], encoded["sent"], encoded["seen"]
    return encoded


def plain_text(state: ChannelState) -> str:
    """encode_state's dict through dumps, its inbound ids and send answers moved last."""
    encoded = encode_state(state)
    encoded["seen"] = encoded.pop("seen")
    encoded["sent"] = encoded.pop("sent")
    return dumps(encoded)


def plain_sent(window: SentWindow) -> str:
    return dumps([{"key": k, "platform_message_id": m, "peer": p} for k, m, p in window])


class Model:
    """SentResults the slow way: a list of keys in put order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def put(self, key: str, message_id: str, peer: str) -> None:
        self.items.pop(key, None)
        self.items[key] = (message_id, peer)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def newest(self, count: int) -> list[tuple[str, str, str]]:
        items = [(key, *value) for key, value in self.items.items()]
        return items[len(items) - count :] if count < len(items) else items


def keys(window: SentWindow) -> list[str]:
    return [key for key, _, _ in window]


# --- SentResults keeps its newest answers --------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from("abcdefghij"),
            st.sampled_from(["m1", "m2", "m\0nul"]),  # (an id with a NUL: kept as a tuple)
            st.sampled_from(["", "1f", "c0ffee"]),  # the sent operation's print
        ),
        st.tuples(st.just("newest"), st.sampled_from([0, 1, 3, 5, 8, 20])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.sampled_from([1, 3, 5, 8, 50]), script=steps)
def test_newest_is_what_a_walk_of_the_table_gives_after_any_puts(
    capacity: int, script: list[tuple[Any, ...]]
) -> None:
    results = SentResults(capacity)
    model = Model(capacity)
    fresh = itertools.count()
    for step in script:
        if step[0] == "put":
            _, key, message_id, printed = step
            peer = f"p{next(fresh)}\0x"  # every put told apart (a NUL in a peer too)
            results.put(key, message_id, peer, printed)
            model.put(key, message_id, peer)
            assert results.get(key) == (message_id, peer)
            assert not results.reused(key, printed)
            assert results.reused(key, "other") == bool(printed)
        else:
            count = step[1]
            got = results.newest(count)
            assert list(got) == model.newest(count)
            assert isinstance(got, SentWindow)
        assert len(results) == len(model.items)


def test_a_key_answered_for_one_message_is_reused_by_another_unknown_prints_answer_any() -> None:
    results = SentResults(10)
    same = OutboundMessage(peer="p1", idempotency_key="k", text="hi")
    results.put("k", "m1", "p1", operation_print(same))
    assert not results.reused("k", operation_print(same))
    assert results.reused("k", operation_print(attrs.evolve(same, text="other")))
    assert not results.reused("never", operation_print(same))  # (not here: not reused)
    # An answer restored from a checkpoint keeps no print: it answers any message.
    restored = SentResults(10)
    for key, message_id, peer in results.newest(5):
        restored.put(key, message_id, peer)
    assert restored.get("k") == ("m1", "p1")
    assert not restored.reused("k", operation_print(attrs.evolve(same, text="other")))
    # The checkpoint's entries never carry the print.
    assert list(results.newest(5)) == [("k", "m1", "p1")]


def test_a_put_after_a_checkpoint_is_in_the_next_and_the_oldest_leaves() -> None:
    results = SentResults(10)
    for n in range(5):
        results.put(f"k{n}", f"m{n}", "p")
    first = results.newest(3)
    assert keys(first) == ["k2", "k3", "k4"]
    assert results.newest(3) is first  # nothing new: the same list
    results.put("k5", "m5", "p")
    assert keys(results.newest(3)) == ["k3", "k4", "k5"]
    results.put("k6", "m6", "p")
    results.put("k7", "m7", "p")
    assert keys(results.newest(3)) == ["k5", "k6", "k7"]
    for n in range(8, 20):  # more than the window holds since the last ask
        results.put(f"k{n}", f"m{n}", "p")
    assert keys(results.newest(3)) == ["k17", "k18", "k19"]


def test_a_key_put_again_moves_to_the_newest_end_of_the_next_checkpoint() -> None:
    results = SentResults(10)
    for n in range(4):
        results.put(f"k{n}", f"m{n}", "p")
    assert keys(results.newest(3)) == ["k1", "k2", "k3"]
    results.put("k2", "again", "p")
    assert list(results.newest(3)) == [("k1", "m1", "p"), ("k3", "m3", "p"), ("k2", "again", "p")]
    results.put("k0", "back", "p")  # a key from before the window
    assert keys(results.newest(3)) == ["k3", "k2", "k0"]


def test_a_table_smaller_than_the_window_drops_what_the_window_held() -> None:
    results = SentResults(2)
    results.put("a", "1", "p")
    results.put("b", "2", "p")
    assert keys(results.newest(5)) == ["a", "b"]
    results.put("c", "3", "p")
    assert keys(results.newest(5)) == ["b", "c"]


def test_asks_for_other_counts_are_answered_each_for_itself() -> None:
    results = SentResults(10)
    for n in range(6):
        results.put(f"k{n}", f"m{n}", "p")
    assert keys(results.newest(2)) == ["k4", "k5"]
    assert keys(results.newest(4)) == ["k2", "k3", "k4", "k5"]
    results.put("k6", "m6", "p")
    assert keys(results.newest(2)) == ["k5", "k6"]
    assert keys(results.newest(4)) == ["k3", "k4", "k5", "k6"]


def test_the_table_of_answers_gives_the_collector_nothing_to_walk() -> None:
    results = SentResults(5_000)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(4_000):
        results.put(f"key-{n}", f"m{n}", f"peer-{n % 7}")
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert len(results) == 4_000
    assert grown < 100, f"{grown} objects more for the collector after 4,000 answers"
    assert results.get("key-17") == ("m17", "peer-3")
    assert keys(results.newest(2)) == ["key-3998", "key-3999"]


def test_answers_count_nothing_towards_a_young_collection() -> None:
    # A tuple per answer was untracked only by the first collection that saw
    # it, and counted towards it: 4,000 sends into tables still filling set
    # off a young collection every 20,000 (the node's threshold), 25-48 ms
    # each at 1,000 channels. A checkpoint between puts, as a busy channel has.
    results = SentResults(5_000)
    results.put("warm", "m", "p")
    results.newest(SENT_KEPT_DURABLE)
    was = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        before = gc.get_count()[0]
        for n in range(4_000):
            results.put(f"key-{n}", f"m{n}", f"peer-{n % 7}")
            if n % 250 == 0:
                sent_json(results.newest(SENT_KEPT_DURABLE))
        counted = gc.get_count()[0] - before
    finally:
        if was:
            gc.enable()
    assert counted < 200, f"{counted} containers counted for 4,000 answers"
    assert results.get("key-17") == ("m17", "peer-3")


@pytest.mark.parametrize(
    ("message_id", "peer"),
    [("m\x00id", "p"), ("m", "p\x00eer"), ("", ""), ("\x00", "\x00\x00")],
)
def test_an_answer_with_a_nul_is_read_back_as_it_was_put(message_id: str, peer: str) -> None:
    # (kept as a pair, as is an id that is no exact string: read back as given)
    odd = SentResults(2)
    odd.put("n", 5, "p")  # type: ignore[arg-type]  # a provider's int id
    assert odd.get("n") == (5, "p")
    results = SentResults(4)
    results.put("k", message_id, peer)
    results.put("other", "m2", "p2")
    assert results.get("k") == (message_id, peer)
    window = results.newest(2)
    assert list(window) == [("k", message_id, peer), ("other", "m2", "p2")]
    assert sent_json(window) == plain_sent(window)
    results.put("k3", message_id, peer)
    assert list(results.newest(2)) == [("other", "m2", "p2"), ("k3", message_id, peer)]


def test_a_checkpoint_s_window_of_answers_gives_the_collector_nothing_to_walk() -> None:
    # 20 busy channels' checkpoints, written twice: 256 answers each. As
    # objects of a class they were 5,120 more for the collector, for life.
    tables = [SentResults(1_000) for _ in range(20)]
    for number, table in enumerate(tables):
        for n in range(300):
            table.put(f"key-{number}-{n}", f"m{n}", f"peer-{n % 7}")
    gc.collect()
    before = len(gc.get_objects())
    windows = []
    for number, table in enumerate(tables):
        sent_json(table.newest(SENT_KEPT_DURABLE))
        table.put(f"more-{number}", "m", "p")
        windows.append(table.newest(SENT_KEPT_DURABLE))
        sent_json(windows[-1])
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert all(len(window) == SENT_KEPT_DURABLE for window in windows)
    assert grown < 100, f"{grown} objects more for the collector after 20 windows of answers"


# --- the answers' text ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    script=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from(["a", "b", "c", 'é"', "d\n", "e"])),
            st.tuples(st.just("write"), st.sampled_from([1, 2, 4, SENT_KEPT_DURABLE])),
        ),
        max_size=50,
    )
)
def test_the_answers_text_is_dumps_of_them_after_any_history(script: list[tuple[Any, ...]]) -> None:
    results = SentResults(6)
    fresh = itertools.count()
    written = []
    for kind, arg in script:
        if kind == "put":
            results.put(arg, f"m{next(fresh)}", "p\u00fc")
        else:
            records = results.newest(arg)
            assert sent_json(records) == plain_sent(records)
            written.append(records)
    for records in written:  # an older list again, after newer ones were written
        assert sent_json(records) == plain_sent(records)


def test_a_shifted_window_keeps_the_texts_of_the_answers_it_keeps() -> None:
    made: list[tuple[str, str, str]] = []

    def encode(entry: tuple[str, str, str]) -> str:
        made.append(entry)
        return f"<{entry[0]}>"

    first = SentWindow((("a", "A", "p"), ("b", "B", "p"), ("c", "C", "p")))
    assert first.shifted([], 3) == first
    unwritten = first.shifted([("d", "D", "p")], 3)  # shifted before its text was made
    assert first.text(encode) == "<a>,<b>,<c>"
    assert first.text(encode) == "<a>,<b>,<c>" and len(made) == 3  # made once
    second = first.shifted([("d", "D", "p"), ("e", "E", 'q"\\')], 3)
    assert list(second) == [("c", "C", "p"), ("d", "D", "p"), ("e", "E", 'q"\\')]
    assert second.text(encode) == "<c>,<d>,<e>"
    assert [key for key, _, _ in made] == ["a", "b", "c", "d", "e"]  # c was not made again
    # Texts of other lengths: the dropped ones are cut off by their lengths.
    fourth = second.shifted([("ffff", "F", "p")], 3)
    assert fourth.text(encode) == "<d>,<e>,<ffff>" and made[-1][0] == "ffff"
    assert fourth.shifted([("g", "G", "p")], 3).text(encode) == "<e>,<ffff>,<g>"
    # All dropped, more than the texts kept: every answer is new.
    third = second.shifted([("f", "F", "p"), ("g", "G", "p"), ("h", "H", "p"), ("i", "I", "p")], 3)
    assert third.text(encode) == "<g>,<h>,<i>"
    assert unwritten.text(encode) == "<b>,<c>,<d>"
    # The windows share their answers: each still reads what it held.
    assert list(first) == [("a", "A", "p"), ("b", "B", "p"), ("c", "C", "p")]
    assert [key for key, _, _ in unwritten] == ["b", "c", "d"]
    assert [key for key, _, _ in second] == ["c", "d", "e"]
    assert [key for key, _, _ in fourth] == ["d", "e", "ffff"]
    assert (second[0], second[-1]) == (("c", "C", "p"), ("e", "E", 'q"\\'))
    with pytest.raises(IndexError):
        second[3]
    fresh = SentWindow(second.entries)  # the codec's text is a window's of its own
    assert sent_json(fresh) == plain_sent(fresh)
    assert sent_json(SentWindow()) == "[]"


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=5),  # which window so far to shift
            st.lists(st.sampled_from(["a", "bb", "ccc", 'd"\\', "\u00e9"]), max_size=6),
            st.integers(min_value=1, max_value=6),  # the count it keeps
            st.booleans(),  # whether the new window's text is made now
        ),
        max_size=25,
    )
)
def test_windows_shifted_from_any_window_read_and_write_what_a_copy_would(
    steps: list[tuple[int, list[str], int, bool]],
) -> None:
    # Windows share one log of answers, which a shift extends in place: any
    # window, shifted at any time (the newest, or an older one again), must
    # keep reading its own entries and write its own text.
    fresh = itertools.count()
    windows = [SentWindow()]
    copies: list[list[tuple[str, str, str]]] = [[]]
    for which, keys, count, write in steps:
        at = which % len(windows)
        new = [(f"{key}-{next(fresh)}", f"m{key}", "p") for key in keys]
        windows.append(windows[at].shifted(new, count))
        copies.append((copies[at] + new)[-count:] if copies[at] + new else [])
        if write:
            assert sent_json(windows[-1]) == plain_sent(windows[-1])
    for window, copy in zip(windows, copies, strict=True):
        assert list(window) == copy
        assert sent_json(window) == plain_sent(SentWindow(copy))


def test_a_busy_channel_s_checkpoints_are_the_plain_text_and_restore_the_answers() -> None:
    memory = ChannelMemory(LIMITS, ChannelSettings())
    for n in range(SENT_KEPT_DURABLE + 40):
        memory.sent.put(f"key-{n}", f"m{n}", f"peer-{n % 7}")
    for n in range(30):  # a checkpoint, then a send or two before the next
        state = export_state(memory, now=2.0 + n, clock_offset=1e9)
        text = state_text(state)
        assert text == plain_text(state)
        for extra in range(n % 3):
            memory.sent.put(f"more-{n}-{extra}", "x", "y")
        if n % 5 == 4:
            memory.sent.put(f"key-{SENT_KEPT_DURABLE + 30}", "again", "peer")  # a key again
    restored = ChannelMemory(LIMITS, ChannelSettings())
    restore_state(restored, decode_state(json.loads(text)), now=0.0, clock_offset=1e9)
    again = export_state(restored, now=2.0, clock_offset=1e9)
    assert again.sent == state.sent
    assert state_text(again).endswith(text[text.index(',"sent":') :])
    restored.sent.put("after-restore", "m", "p")
    after = export_state(restored, now=3.0, clock_offset=1e9)
    assert after.sent[-1][0] == "after-restore"
    assert state_text(after) == plain_text(after)


# --- the inbound ids ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), added=st.lists(st.sampled_from("abcdefghijklmnop")))
def test_the_newest_ids_are_the_table_s_last_in_order(capacity: int, added: list[str]) -> None:
    ids = RecentIds(capacity)
    model: OrderedDict[str, None] = OrderedDict()
    for key in added:
        assert ids.add(key) is (key not in model)
        model.pop(key, None)
        model[key] = None
        while len(model) > capacity:
            model.popitem(last=False)
    table = list(model)
    for count in (1, 3, capacity, capacity + 5):
        assert ids.newest(count) == tuple(table[max(0, len(table) - count) :])
    assert ids.newest(0) == ()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text() | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
    )
)
@example(["wamid.1", "a\ud800b", '\u00e9\u2028\n"\\'])
def test_the_ids_text_is_what_dumps_writes(ids: list[str]) -> None:
    # Lone surrogates included: msgspec refuses them, and no store keeps them
    # (dumps refuses them, and a state text holding one is refused: storable).
    try:
        expected = dumps(ids)
    except ValueError:
        with pytest.raises(ValueError, match="lone surrogate"):
            storable(seen_json(tuple(ids)))
    else:
        assert seen_json(tuple(ids)) == expected


# --- the rest of the state ------------------------------------------------------------------

maybe_time = st.none() | st.floats(allow_nan=False, allow_infinity=False)
# Every float, NaN and the infinities included, and the times a node writes
# (unix seconds, delays), around where repr starts writing an exponent.
any_time = (
    st.none()
    | st.floats()
    | st.floats(min_value=1.7e9, max_value=1.9e9)
    | st.floats(min_value=0, max_value=600)
    | st.sampled_from([1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, -0.0, 5e-324])
)
# Session data msgspec and dumps write differently, or only one of them writes.
odd_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=3)
    | st.datetimes()
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text() | st.integers() | st.floats() | st.booleans() | st.none(), inner, max_size=3
        )
    ),
    max_leaves=8,
)


plain_keys = st.text() | st.integers()  # a peer's bucket is keyed by its id
plain_tats = st.integers()
# Keys and instants dumps and msgspec write differently, or only one of them writes.
odd_keys = plain_keys | st.floats() | st.binary(max_size=2) | st.datetimes()
odd_tats = st.integers() | st.floats()


def one_bucket(key: Any, tat_ns: Any = 1) -> CompositeLimiterState:
    return CompositeLimiterState(
        parts=(KeyedLimiterState(buckets=((key, GCRAState(tat_ns=tat_ns)),)),)
    )


def limiter_states_with(
    times: st.SearchStrategy[float | None],
    tats: st.SearchStrategy[Any],
    keys: st.SearchStrategy[Any] = plain_keys,
) -> st.SearchStrategy[CompositeLimiterState]:
    gcra_states = st.builds(GCRAState, tat_ns=st.none() | tats, paused_until=times)
    limiter_parts = gcra_states | st.builds(
        KeyedLimiterState,
        buckets=st.lists(st.tuples(keys, gcra_states), max_size=4).map(tuple),
        paused_until=times,
        new_keys_paused_until=times,
    )
    return st.builds(
        CompositeLimiterState,
        parts=st.lists(limiter_parts, max_size=3).map(tuple),
        paused_until=times,
    )


def channel_states_with(
    times: st.SearchStrategy[float | None],
    session_data: st.SearchStrategy[Any],
    *,
    tats: st.SearchStrategy[Any] = plain_tats,
    keys: st.SearchStrategy[Any] = plain_keys,
) -> st.SearchStrategy[ChannelState]:
    return st.builds(
        ChannelState,
        version=st.integers(0, 3),
        session=st.none() | st.builds(SessionState, provider=st.text(), data=session_data),
        limiter=st.none() | limiter_states_with(times, tats, keys),
        backoff=st.builds(
            BackoffState, failures=st.integers(0, 50), last_delay=times, connected_at=times
        ),
        breaker=st.builds(
            CircuitBreakerState,
            state=st.sampled_from(BreakerState),
            consecutive_failures=st.integers(0, 10),
            retry_at=times,
            trials_in_flight=st.integers(0, 3),
            successes=st.integers(0, 10**12),
            failures=st.integers(0, 10**6),
            rejections=st.integers(0, 10**6),
            times_opened=st.integers(0, 100),
        ),
        seen=st.lists(st.text(), max_size=5).map(tuple),
        failed=st.none() | st.text(),
        dead_letters_total=st.integers(0, 10**9),
        dead_letters_dropped=st.integers(0, 10**9),
        sent=st.lists(st.tuples(st.text(), st.text(), st.text()), max_size=4).map(
            lambda entries: SentWindow(tuple(entries))
        ),
        clean=st.booleans(),
    )


channel_states = channel_states_with(maybe_time, json_objects)


@settings(max_examples=300, deadline=None)
@given(channel_states)
def test_the_rest_by_hand_is_the_dict_cattrs_makes(state: ChannelState) -> None:
    by_hand = state_rest(state)
    assert by_hand == plain_rest(state)
    assert list(by_hand) == list(plain_rest(state))  # the same order: the same text
    assert dumps(by_hand) == dumps(plain_rest(state))


@settings(max_examples=300, deadline=None)
@given(channel_states)
def test_the_state_text_is_the_plain_encoding_byte_for_byte(state: ChannelState) -> None:
    assert state_text(state) == plain_text(state)
    assert state_text(state) == plain_text(state)  # again, from what the first kept
    loaded = decode_state(json.loads(state_text(state)))
    assert loaded == attrs.evolve(state, dead_letters=())


@settings(max_examples=500, deadline=None)
@given(
    channel_states_with(
        any_time,
        st.dictionaries(st.text(), odd_values, max_size=3),
        tats=odd_tats,
        keys=odd_keys,
    )
)
@example(ChannelState(session=SessionState(provider="x", data={"k": {1e16: 1}})))  # "1e16"
@example(ChannelState(session=SessionState(provider="x", data={"k": {math.nan: 1}})))  # "nan"
@example(ChannelState(session=SessionState(provider="x", data={"at": datetime(2026, 12, 7)})))
@example(ChannelState(session=SessionState(provider="x", data={"k": [1.0, math.inf]})))  # null
@example(ChannelState(version=math.nan))  # type: ignore[arg-type]  # null, where dumps refuses
@example(ChannelState(limiter=one_bucket(1e-05)))  # [0.00001, ...] where dumps writes 1e-05
@example(ChannelState(limiter=one_bucket(b"ab")))  # base64, where dumps refuses bytes
@example(ChannelState(limiter=one_bucket("p", tat_ns=math.nan)))  # null
@example(  # a stored row whose bucket key is a float
    state_from_text(
        '{"version":1,"limiter":{"parts":[{"buckets":[[1e-05,{"tat_ns":1,"paused_until":null}]]}]}}'
    )
)
def test_the_state_text_is_dumps_text_or_dumps_refusal_whatever_the_numbers(
    state: ChannelState,
) -> None:
    # msgspec writes the rest where its text is dumps'; a float it would write
    # otherwise (an exponent, NaN as null) or a value dumps refuses goes to dumps.
    try:
        expected = plain_text(state)
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)):
            state_text(state)
    else:
        assert state_text(state) == expected


def test_a_node_s_usual_state_is_written_by_msgspec_and_an_exponent_by_dumps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []

    def counted(data: Any) -> str:
        calls.append(data)
        return dumps(data)

    monkeypatch.setattr(codec, "dumps", counted)
    usual = ChannelState(
        session=SessionState(provider="websocket", data={"last_message_id": "m-1", "n": 2.5}),
        limiter=CompositeLimiterState(
            parts=(
                GCRAState(tat_ns=1_796_000_000_123_456_789, paused_until=None),
                KeyedLimiterState(buckets=(("p", GCRAState(tat_ns=5, paused_until=1.8e9)),)),
            )
        ),
        backoff=BackoffState(failures=0, last_delay=0.25, connected_at=1_796_625_267.6664462),
        breaker=CircuitBreakerState(retry_at=None, successes=120),
    )
    assert state_text(usual) == plain_text(usual)
    assert calls == []  # the rest by msgspec (plain_text's own dumps is the unpatched one)
    far = attrs.evolve(usual, backoff=BackoffState(failures=1, last_delay=1e-05))
    assert state_text(far) == plain_text(far)
    assert len(calls) == 1  # 1e-05: repr writes an exponent, msgspec 0.00001
    nan = attrs.evolve(usual, breaker=CircuitBreakerState(retry_at=float("nan")))
    with pytest.raises(ValueError, match="Out of range float values"):
        state_text(nan)  # dumps refuses it; msgspec would have written null
    assert len(calls) == 2


# --- the export's shortcuts -----------------------------------------------------------------


def plain_active(state: CompositeLimiterState, now: float) -> CompositeLimiterState:
    """What export_state kept of a limiter before it moved its times: the state
    without per-peer buckets full again by ``now``, nor a channel pause that is over."""
    now_ns = math.floor(now * 1e9)

    def resting(bucket: GCRAState) -> bool:
        paused = bucket.paused_until is not None and bucket.paused_until > now
        return not paused and (bucket.tat_ns is None or bucket.tat_ns <= now_ns)

    parts: list[Any] = []
    for part in state.parts:
        if isinstance(part, KeyedLimiterState):
            part = attrs.evolve(
                part, buckets=tuple((k, b) for k, b in part.buckets if not resting(b))
            )
        parts.append(part)
    paused = state.paused_until
    return attrs.evolve(
        state,
        parts=tuple(parts),
        paused_until=None if paused is not None and paused <= now else paused,
    )


# Times near ``now`` (so that buckets rest, or not), in seconds and in nanoseconds.
near_now = st.none() | st.floats(min_value=0, max_value=20)
near_now_ns = st.integers(min_value=0, max_value=20 * 10**9) | st.just(math.nan)


@settings(max_examples=300, deadline=None)
@given(
    limiter=limiter_states_with(near_now, near_now_ns),
    now=st.floats(min_value=0, max_value=20),
    shift=st.floats(min_value=-2e9, max_value=2e9),
)
@example(
    limiter=CompositeLimiterState(
        parts=(
            GCRAState(tat_ns=9 * 10**9, paused_until=None),
            KeyedLimiterState(
                buckets=(
                    ("rested", GCRAState(tat_ns=4 * 10**9, paused_until=None)),
                    ("busy", GCRAState(tat_ns=6 * 10**9, paused_until=None)),
                    ("paused", GCRAState(tat_ns=None, paused_until=5.5)),
                    ("was paused", GCRAState(tat_ns=None, paused_until=5.0)),
                ),
                paused_until=6.0,
            ),
        ),
        paused_until=5.0,
    ),
    now=5.0,
    shift=1.8e9,
)
def test_the_limiter_s_export_in_one_pass_is_the_active_state_moved(
    limiter: CompositeLimiterState, now: float, shift: float
) -> None:
    # repr: a NaN instant is kept as NaN by both, and NaN == NaN is false.
    moved = _shift_limiter(plain_active(limiter, now), shift)
    assert repr(_active_shifted(limiter, now, shift)) == repr(moved)


def test_the_backoff_is_moved_field_by_field_and_has_no_field_it_leaves_behind() -> None:
    # _shift_backoff makes the moved state from its fields instead of evolving it.
    assert [field.name for field in attrs.fields(BackoffState)] == [
        "failures",
        "last_delay",
        "connected_at",
    ]
    state = BackoffState(failures=3, last_delay=2.5, connected_at=10.0)
    assert _shift_backoff(state, 1e9) == attrs.evolve(state, connected_at=_later_s(10.0, 1e9))
    assert _shift_backoff(state, 1e9).connected_at > 10.0 + 1e9  # later, never earlier


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (
            [{"key": "k", "platform_message_id": 5, "peer": "p"}],
            "answer 0: platform_message_id must be a string, got int",
        ),
        (
            [{"key": "k", "platform_message_id": "m", "peer": "p"}, {"key": "k"}],
            "answer 1: platform_message_id is missing",
        ),
        (
            [{"key": None, "platform_message_id": "m", "peer": "p"}],
            "answer 0: key must be a string, got null",
        ),
        (["k"], "answer 0: expected an object, got str"),
        ({"key": "k"}, "expected a list of answers, got dict"),
    ],
)
def test_answers_that_are_not_three_strings_are_refused_saying_which_and_why(
    sent: Any, why: str
) -> None:
    data = json.loads(state_text(ChannelState()))
    data["sent"] = sent
    with pytest.raises(ValueError, match="not a valid channel state") as refused:
        decode_state(data)
    assert str(refused.value) == f"not a valid channel state: {why} @ $.sent"


def test_a_stored_state_nested_too_deep_to_read_is_refused_not_raised() -> None:
    text = '{"sent":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ValueError, match="nested too deep to read"):
        state_from_text(text)
    assert state_from_text(state_text(ChannelState())) == ChannelState()


def test_a_state_takes_its_answers_as_triples_too() -> None:
    state = ChannelState(sent=(("k", "m", "p"), ["k2", "m2", "p2"]))
    assert state.sent == SentWindow((("k", "m", "p"), ("k2", "m2", "p2")))
    assert state_text(state) == plain_text(state)
    assert attrs.evolve(state, sent=()).sent == SentWindow()
