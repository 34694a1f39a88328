"""Identifiers: random version 4 and time-ordered version 7 UUIDs (RFC 9562)."""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid

import pytest

from gateway import ids
from gateway.ids import POOL_SIZE, random_bytes, random_id, time_ordered_id, token

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


def test_random_bytes_are_never_handed_out_twice_across_refills() -> None:
    # Draw well past several refills in odd sizes; 16-byte windows never repeat.
    drawn = b"".join(random_bytes(n) for n in [1, 7, 16, 33, 1000, POOL_SIZE] * 20)
    windows = [drawn[i : i + 16] for i in range(0, len(drawn) - 16, 16)]
    assert len(set(windows)) == len(windows)
    assert len(random_bytes(POOL_SIZE * 3)) == POOL_SIZE * 3  # larger than a pool


def test_random_bytes_from_several_threads_do_not_overlap() -> None:
    results: list[list[bytes]] = [[] for _ in range(4)]

    def draw(out: list[bytes]) -> None:
        for _ in range(2000):
            out.append(random_bytes(16))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [b for out in results for b in out]
    assert len(set(everything)) == len(everything) == 8000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_random_bytes() -> None:
    random_bytes(1)  # the pool is filled and partly used before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send what it draws next, then leave at once
        try:
            os.write(write, random_bytes(64))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while len(child) < 64:
        chunk = os.read(read, 64 - len(child))
        if not chunk:
            break
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = random_bytes(64)
    assert len(child) == 64
    assert child != parent


def test_tokens_are_url_safe_and_carry_the_requested_bytes() -> None:
    values = [token(16) for _ in range(500)]
    for value in values:
        assert "=" not in value and "+" not in value and "/" not in value
        assert len(base64.urlsafe_b64decode(value + "==")) == 16
    assert len(set(values)) == 500
    assert len(base64.urlsafe_b64decode(token(32) + "=")) == 32


def test_the_pool_refills_from_the_operating_system(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(ids.os, "urandom", counting)
    ids._pool.forget()
    for _ in range(POOL_SIZE // 16 + 1):
        random_bytes(16)
    assert calls == [POOL_SIZE, POOL_SIZE]  # one refill per pool, not one per id


def test_each_thread_draws_from_a_pool_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # The trail writer's thread and the event loop take no lock between them.
    calls: list[str] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(threading.current_thread().name)
        return real(n)

    monkeypatch.setattr(ids.os, "urandom", counting)
    ids._pool.forget()
    mine = random_bytes(16)
    other: list[bytes] = []
    worker = threading.Thread(target=lambda: other.append(random_bytes(16)), name="writer")
    worker.start()
    worker.join()
    again = random_bytes(16)
    assert calls == [threading.current_thread().name, "writer"]  # one refill each
    assert len({mine, other[0], again}) == 3
