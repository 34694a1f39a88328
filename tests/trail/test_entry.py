"""Trail entry bytes and leaf hashes (DESIGN §4 "Trail", RFC 8785, RFC 6962 §2.1)."""

from __future__ import annotations

import hashlib
import json

import pytest

from gateway.trail.entry import ENTRY_PREFIX, EventType, encode_entry, leaf_hash

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
