"""Identifiers: time-ordered ones for rows that index by id, random ones elsewhere.

Consents and transfers are looked up by id and indexed by it (their tables'
keys, and the trail's ``consent_id`` and ``transfer_id`` indexes). A random
(version 4) UUID lands each new row on a random page of every such B-tree, so
once the trail is larger than the cache every append dirties and writes a page
per index: bench/README.md measured 15 KB written per trail entry at 10⁵
entries against 3.9 KB with time-ordered ids, and twice the time per entry.
Version 7 UUIDs (RFC 9562 §5.7) begin with the Unix time in milliseconds, so new
ids sort after old ones and the indexes grow at their right edge.

A version 7 id tells when it was made, to the millisecond. For a consent or a
transfer that is no secret: the service provider that asked and the person who
granted it know, and the trail records the time anyway. Ids whose creation time
should stay private (a person's subject id) remain random: :func:`random_id`.

Random bits come from :func:`random_bytes`, which draws ``os.urandom`` 4 KiB at
a time. ``os.urandom`` lets go of the GIL around its system call, and with
the trail writer's thread busy the event loop then waits up to a switch
interval (5 ms) to get it back: measured 1.6 µs per id alone against 243 µs
with one busy thread beside it (bench/README.md), paid three times per
transfer (request id, transfer id, provider assertion ``jti``). Secrets that
outlive a request (session tokens, keys) keep using :mod:`secrets`.
"""

from __future__ import annotations

import base64
import os
import threading
import time

# Bytes drawn from os.urandom per refill.
POOL_SIZE = 4096


class _RandomPool(threading.local):
    """Bytes of ``os.urandom``, handed out once each, refilled a pool at a time.

    One pool per thread (a ``threading.local``): the event loop makes request
    and transfer ids while the trail writer's thread makes entry ids, and a
    pool shared under a lock made each wait for the other whenever the holder
    was preempted (GIL hand-offs; bench/README.md). Bytes never pass from one
    thread's pool to another's, so none is handed out twice.
    """

    def __init__(self) -> None:
        self.pool = b""
        self.taken = 0

    def take(self, n: int) -> bytes:
        start = self.taken
        end = start + n
        if end > len(self.pool):
            self.pool = os.urandom(max(POOL_SIZE, n))
            start, end = 0, n
        self.taken = end
        return self.pool[start:end]

    def forget(self) -> None:
        """After a fork: the child must not hand out the bytes its parent will.

        Only the forking thread lives on in the child, with its own pool: that
        is the one to empty.
        """
        self.pool = b""
        self.taken = 0


_pool = _RandomPool()
os.register_at_fork(after_in_child=_pool.forget)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG, never handed out twice."""
    return _pool.take(n)


def token(nbytes: int = 16) -> str:
    """Like ``secrets.token_urlsafe``: ``nbytes`` random bytes, base64url, no padding."""
    return base64.urlsafe_b64encode(random_bytes(nbytes)).rstrip(b"=").decode("ascii")


def _canonical(b: bytearray) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_id() -> str:
    """``str(uuid.uuid4())`` without building a ``UUID`` (RFC 9562 §5.4: 122 random bits)."""
    b = bytearray(random_bytes(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # variant 10 (RFC 9562 §4.1)
    return _canonical(b)


def time_ordered_id() -> str:
    """A version 7 UUID (RFC 9562 §5.7): 48 bits of Unix milliseconds, 74 random bits.

    Ids made in the same millisecond are ordered at random among themselves
    (the RFC's plain method, without its optional counter): index locality
    only needs the millisecond prefix, and uniqueness rests on the 74 bits.
    """
    b = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + random_bytes(10))
    b[6] = b[6] & 0x0F | 0x70  # version 7
    b[8] = b[8] & 0x3F | 0x80  # variant 10
    return _canonical(b)
