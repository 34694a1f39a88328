"""Identifiers: random version 4 and time-ordered version 7 UUIDs (RFC 9562)."""

from __future__ import annotations

import time
import uuid

from gateway.ids import random_id, time_ordered_id

# The version (bits 48-51) and variant (bits 64-65) fields, counted from the left.
VERSION_AND_VARIANT = (0xF << 76) | (0x3 << 62)
EVERYTHING = (1 << 128) - 1


def _bits_that_vary(ids: list[str]) -> int:
    ones, zeros = 0, 0
    for text in ids:
        n = uuid.UUID(text).int
        ones |= n
        zeros |= ~n
    return ones & zeros & EVERYTHING


def test_random_ids_are_canonical_version_4_uuids() -> None:
    for _ in range(200):
        text = random_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lowercase, 8-4-4-4-12


def test_random_ids_keep_all_122_random_bits() -> None:
    # Every bit outside the version and variant fields takes both values.
    ids = [random_id() for _ in range(2000)]
    assert _bits_that_vary(ids) == EVERYTHING & ~VERSION_AND_VARIANT
    assert len(set(ids[:1000])) == 1000


def test_time_ordered_ids_are_canonical_version_7_uuids_of_now() -> None:
    before = time.time_ns() // 1_000_000
    texts = [time_ordered_id() for _ in range(200)]
    after = time.time_ns() // 1_000_000
    for text in texts:
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
        # RFC 9562 §5.7: unix_ts_ms is the first 48 bits.
        assert before <= parsed.int >> 80 <= after


def test_time_ordered_ids_keep_74_random_bits() -> None:
    ids = [time_ordered_id() for _ in range(2000)]
    random_bits = ((1 << 12) - 1) << 64 | ((1 << 62) - 1)  # rand_a and rand_b
    assert _bits_that_vary(ids) & random_bits == random_bits
    assert len(set(ids)) == len(ids)


def test_ids_of_a_later_millisecond_sort_after_earlier_ones() -> None:
    # As text too: the hex digits of the timestamp come first, zero-padded.
    first = time_ordered_id()
    time.sleep(0.002)
    second = time_ordered_id()
    assert first < second
    assert uuid.UUID(first).int < uuid.UUID(second).int
