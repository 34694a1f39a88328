"""Trail entry bytes and leaf hashes (DESIGN §4 "Trail", RFC 8785, RFC 6962 §2.1)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.trail.entry import (
    ENTRY_PREFIX,
    EventType,
    _json_text,
    _json_writes_jcs,
    encode_entry,
    leaf_hash,
)
from gateway.trail.store import Trail, TrailEvent

# A consent event as the gateway would record it, with numbers and non-ASCII
# text in its details so that every JCS rule shows in the bytes.
KNOWN_EVENT = {
    "type": "consent.granted",
    "time": "2026-11-29T10:00:00.000000Z",
    "id": "6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b",
    "policy": "sha256:44eba45305a1c55c2c0c8d158ab3bf7ef0eed8d83736237e14c73c8a636537ef",
    "client_id": "mairie-demoville",
    "details": {
        "whole": 2.0,
        "tiny": 1e-7,
        "size": 1234,
        "ratio": 0.5,
        "label": "Démoville €",
        "big": 1e21,
    },
}

# Written out by hand from RFC 8785: keys sorted, no whitespace, ECMAScript
# number forms (2.0 -> 2, 1e21 -> 1e+21, 1e-7 stays), UTF-8 text unescaped.
KNOWN_ENTRY = (
    "gateway-trail/v1\n"
    '{"client_id":"mairie-demoville",'
    '"details":{"big":1e+21,"label":"Démoville €","ratio":0.5,"size":1234,"tiny":1e-7,"whole":2},'
    '"id":"6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b",'
    '"policy":"sha256:44eba45305a1c55c2c0c8d158ab3bf7ef0eed8d83736237e14c73c8a636537ef",'
    '"time":"2026-11-29T10:00:00.000000Z",'
    '"type":"consent.granted"}'
).encode()

# SHA-256(0x00): the RFC 6962 leaf hash of an empty entry, computed once
# (`printf '\0' | sha256sum`) and pinned here so a change of hashing shows.
EMPTY_LEAF_HASH = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def test_entry_is_prefix_and_canonical_json_of_a_known_event() -> None:
    entry = encode_entry(KNOWN_EVENT)
    assert entry == KNOWN_ENTRY
    assert entry.startswith(ENTRY_PREFIX)
    assert ENTRY_PREFIX == b"gateway-trail/v1\n"


def test_entry_has_no_whitespace_outside_strings() -> None:
    body = encode_entry({"a": [1, 2, {"b": None, "c": True}], "d": "x y"})[len(ENTRY_PREFIX) :]
    assert body == b'{"a":[1,2,{"b":null,"c":true}],"d":"x y"}'


def test_entry_text_is_utf8_not_escaped() -> None:
    body = encode_entry({"label": "é€😀"})[len(ENTRY_PREFIX) :]
    assert body == b'{"label":"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}'
    assert b"\\u" not in body


def test_entry_escapes_controls_as_rfc8785_says() -> None:
    body = encode_entry({"s": 'a/b\n\x0f"\\'})[len(ENTRY_PREFIX) :]
    # Short escapes where JSON has them, lowercase \u00xx otherwise, "/" left alone.
    assert body == b'{"s":"a/b\\n\\u000f\\"\\\\"}'


def test_entry_keys_sort_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3's own example: the emoji (a surrogate pair, 0xD83D...)
    # sorts before U+FB33 although its code point is larger.
    event = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    body = encode_entry(event)[len(ENTRY_PREFIX) :]
    keys = list(json.loads(body))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_entry_does_not_depend_on_insertion_order() -> None:
    reordered = dict(reversed(list(KNOWN_EVENT.items())))
    assert encode_entry(reordered) == encode_entry(KNOWN_EVENT)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**60])
def test_entry_refuses_values_without_a_canonical_form(value: float) -> None:
    with pytest.raises(ValueError):
        encode_entry({"x": value})


def test_leaf_hash_is_sha256_of_zero_byte_and_entry() -> None:
    assert leaf_hash(KNOWN_ENTRY) == hashlib.sha256(b"\x00" + KNOWN_ENTRY).digest()
    # The 0x00 prefix matters: a bare SHA-256 of the entry is a different value.
    assert leaf_hash(KNOWN_ENTRY) != hashlib.sha256(KNOWN_ENTRY).digest()
    assert len(leaf_hash(KNOWN_ENTRY)) == 32


def test_leaf_hash_of_empty_entry_is_the_rfc6962_value() -> None:
    assert leaf_hash(b"").hex() == EMPTY_LEAF_HASH


def test_event_types_are_the_designed_names() -> None:
    designed = {
        "consent.requested",
        "consent.granted",
        "consent.denied",
        "consent.revoked",
        "consent.expired",
        "consent.exhausted",
        "token.issued",
        "transfer.authorized",
        "transfer.denied",
        "transfer.completed",
        "transfer.failed",
        "policy.loaded",
        "key.rotated",
        "audit.accessed",
    }
    assert designed <= {str(t) for t in EventType}


# ---------------------------------------------------------------------------
# The json shortcut writes what rfc8785 writes (RFC 8785 §3.2.2, §3.2.3)

PROPERTY = settings(max_examples=400, deadline=None, database=None)

# Characters where JSON encoders tend to differ: controls and their short
# escapes, quote, backslash, slash, DEL, the JavaScript line separators, lone
# surrogates, both sides of the surrogate block (U+E000..U+FFFF sorts after
# astral characters in UTF-16, before them in code points), astral characters.
AWKWARD = [
    *(chr(c) for c in range(0x20)),
    *'"\\/\x7f\x80\xa0\xe9\u20ac\u2028\u2029\ud7ff\ud800\udbff\udc00\udfff',
    *"\ue000\ufb33\ufeff\ufffd\uffff\U00010000\U0001f600\U0010ffff",
]
TEXT = st.text(
    st.one_of(st.sampled_from(AWKWARD), st.characters(exclude_categories=())), max_size=8
)
INTEGERS = st.one_of(
    st.integers(),
    st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**63, 10**400]).flatmap(
        lambda n: st.sampled_from([n, -n])
    ),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTEGERS,
    st.floats(),  # NaN, infinities, -0.0, subnormals
    TEXT,
    st.sampled_from([EventType.CONSENT_GRANTED, b"bytes", 1j]),  # a subclass, non-JSON types
)
KEYS = st.one_of(TEXT, st.sampled_from([0, None, True, EventType.TOKEN_ISSUED]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(KEYS, inner, max_size=5),
    ),
    max_leaves=24,
)
EVENTS = st.dictionaries(KEYS, VALUES, max_size=6)


def outcome(encode: Any, value: Any) -> bytes | type[BaseException]:
    try:
        return bytes(encode(value))
    except Exception as exc:
        return type(exc)


@PROPERTY
@given(EVENTS)
def test_entry_is_what_rfc8785_writes(event: dict[Any, Any]) -> None:
    expected = outcome(rfc8785.dumps, event)
    got = outcome(encode_entry, event)
    if isinstance(expected, bytes):
        assert got == ENTRY_PREFIX + expected
    else:
        assert got is expected  # refused as rfc8785 refuses it


@PROPERTY
@given(VALUES)
def test_json_writes_jcs_only_where_it_says_so(value: Any) -> None:
    # The shortcut on its own (encode_entry would hide a mistake behind rfc8785):
    # where the check lets json write a value, the bytes are rfc8785's, or
    # both refuse (a lone surrogate).
    if _json_writes_jcs(value):
        got = outcome(lambda v: _json_text(v).encode(), value)
        expected = outcome(rfc8785.dumps, value)
        if isinstance(expected, bytes):
            assert got == expected
        else:
            assert got is UnicodeEncodeError
            assert issubclass(expected, ValueError)


# What events hold: exact types, safe integers, text without lone surrogates
# (astral characters included), names without astral characters.
PLAIN_TEXT = st.text(st.one_of(st.sampled_from(AWKWARD), st.characters()), max_size=8).filter(
    lambda s: not any("\ud800" <= c <= "\udfff" for c in s)
)
PLAIN_KEYS = PLAIN_TEXT.filter(lambda s: all(c <= "\uffff" for c in s))
PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), PLAIN_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(PLAIN_KEYS, inner, max_size=5),
    ),
    max_leaves=24,
)


@PROPERTY
@given(PLAIN)
def test_event_values_take_the_json_shortcut(value: Any) -> None:
    assert _json_writes_jcs(value)
    assert _json_text(value).encode() == rfc8785.dumps(value)


def test_recorded_events_take_the_json_shortcut() -> None:
    event = TrailEvent(
        EventType.TRANSFER_COMPLETED,
        client_id="mairie-demoville",
        consent_id="c-1",
        transfer_id="t-1",
        provider="dgfip",
        resource="revenu_fiscal",
        subject="pseudo-1",
        details={"provider_status": 200, "delivered_size": 12, "delivered_sha256": "00" * 32},
    )
    obj = Trail("sha256:" + "ab" * 32).event_object(event, now=datetime.now(UTC))
    assert _json_writes_jcs(obj)
    assert encode_entry(obj) == ENTRY_PREFIX + rfc8785.dumps(obj)


@pytest.mark.parametrize(
    "value",
    [
        1.0,  # JCS writes 1
        [2**53],  # beyond rfc8785's integers
        {"\U0001f600": 1, "\ufb33": 2},  # UTF-16 order differs from code points
        {1: "x"},  # json would write "1"
        EventType.CONSENT_GRANTED,  # a str subclass
        {"a": {"b": [0.5]}},  # a float anywhere
    ],
)
def test_values_json_may_write_differently_go_to_rfc8785(value: Any) -> None:
    assert not _json_writes_jcs(value)


@pytest.mark.parametrize("n", [2**53 - 1, -(2**53) + 1])
def test_largest_safe_integers_are_written(n: int) -> None:
    assert encode_entry({"n": n}) == ENTRY_PREFIX + b'{"n":%d}' % n


@pytest.mark.parametrize("n", [2**53, -(2**53), 10**30])
def test_unsafe_integers_are_refused(n: int) -> None:
    with pytest.raises(rfc8785.IntegerDomainError):
        encode_entry({"n": n})


def test_line_separators_and_del_are_written_as_they_are() -> None:
    body = encode_entry({"s": "\x7f\u2028\u2029"})[len(ENTRY_PREFIX) :]
    assert body == '{"s":"\x7f\u2028\u2029"}'.encode()


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        encode_entry({"s": "\ud800"})
    with pytest.raises(ValueError):
        encode_entry({"\udfff": 1})


def test_cyclic_value_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        encode_entry({"loop": loop})
