"""Offline verification of a trail export, and the monitor that watches checkpoints.

``gateway trail verify`` needs nothing from the gateway but three files: an
NDJSON export (``/audit/export``), a signed checkpoint and the verifier key. It
checks the signature, recomputes every leaf hash and the root at the
checkpoint's size in one streaming pass with O(log n) memory, and, given an
older checkpoint, that the export's history extends it (no rewrite). The first
problem found is named with its index.

``gateway trail watch`` is what an outside witness runs: it fetches the
checkpoint periodically, verifies it against the last one it saw with a
consistency proof from the gateway, and raises the alarm on a fork or a
rollback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import rfc8785

import gateway.trail.merkle as merkle
from gateway.trail.checkpoint import Checkpoint, open_checkpoint
from gateway.trail.entry import ENTRY_PREFIX
from gateway.trail.note import NoteError, Verifier


class VerificationFailed(Exception):
    """The export, a checkpoint or a proof does not hold; ``index`` names the first bad entry."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"entry {index}: {message}")
        self.index = index


class RootBuilder:
    """RFC 6962 root of a growing list of leaves, keeping only the complete subtrees."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes decreasing

    def add(self, leaf: bytes) -> None:
        size, h = 1, leaf
        while self._stack and self._stack[-1][0] == size:
            left_size, left = self._stack.pop()
            h = merkle.node_hash(left, h)
            size += left_size
        self._stack.append((size, h))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return merkle.EMPTY_ROOT
        h = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            h = merkle.node_hash(left, h)
        return h


def _b64(value: Any, what: str, index: int) -> bytes:
    if not isinstance(value, str):
        raise VerificationFailed(f"{what} is not a base64 string", index)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed(f"{what} is not valid base64", index) from None


def check_entry(index: int, entry: bytes) -> None:
    """An entry is the prefix followed by canonical (RFC 8785) JSON of an event object."""
    if not entry.startswith(ENTRY_PREFIX):
        raise VerificationFailed("entry does not start with gateway-trail/v1", index)
    body = entry[len(ENTRY_PREFIX) :]
    try:
        event = json.loads(body)
    except ValueError:
        raise VerificationFailed("entry body is not JSON", index) from None
    if not isinstance(event, dict) or rfc8785.dumps(event) != body:
        raise VerificationFailed("entry body is not canonical JSON of an object", index)


@dataclass
class Report:
    entries: int = 0
    size: int = 0
    root: bytes = b""
    old_size: int | None = None
    notes: list[str] = field(default_factory=list)


def read_checkpoint(text: str, verifier: Verifier, what: str) -> Checkpoint:
    try:
        return open_checkpoint(text, verifier)
    except (NoteError, ValueError) as exc:
        raise VerificationFailed(f"{what}: signature or format does not hold ({exc})") from None


def verify_export(
    lines: Iterable[str],
    checkpoint: Checkpoint,
    *,
    old: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Check every entry of the export against ``checkpoint`` (and ``old``)."""
    if old is not None and old.size > checkpoint.size:
        raise VerificationFailed(
            f"rollback: the older checkpoint has {old.size} entries, the newer {checkpoint.size}"
        )
    builder = RootBuilder()
    report = Report(size=checkpoint.size, old_size=old.size if old else None)
    at_size: dict[int, bytes] = {}
    wanted = {checkpoint.size} | ({old.size} if old else set())
    for expected, line in enumerate(_non_empty(lines)):
        try:
            record = json.loads(line)
        except ValueError:
            raise VerificationFailed("line is not JSON", expected) from None
        if not isinstance(record, dict):
            raise VerificationFailed("line is not a JSON object", expected)
        index = record.get("index")
        if index != expected:
            problem = (
                f"expected index {expected}, found {index}"
                + (" (an entry is missing)" if isinstance(index, int) and index > expected else "")
                + (
                    " (entries out of order or repeated)"
                    if isinstance(index, int) and index < expected
                    else ""
                )
            )
            raise VerificationFailed(problem, expected)
        entry = _b64(record.get("entry"), "entry", expected)
        stated = _b64(record.get("leaf_hash"), "leaf_hash", expected)
        leaf = merkle.leaf_hash(entry)
        if leaf != stated:
            raise VerificationFailed("leaf hash does not match the entry bytes", expected)
        check_entry(expected, entry)
        builder.add(leaf)
        if builder.size in wanted:
            at_size[builder.size] = builder.root()
        if progress is not None:
            progress(builder.size)
    report.entries = builder.size
    if builder.size < checkpoint.size:
        raise VerificationFailed(
            f"the export holds {builder.size} entries, the checkpoint {checkpoint.size}",
            builder.size,
        )
    if old is not None and at_size.get(old.size) != old.root:
        raise VerificationFailed(
            f"history rewritten: the first {old.size} entries do not match the older checkpoint"
        )
    report.root = at_size[checkpoint.size]
    if report.root != checkpoint.root:
        raise VerificationFailed(
            f"the root of the first {checkpoint.size} entries does not match the checkpoint "
            "(an entry was changed, removed, reordered or replaced)"
        )
    if builder.size > checkpoint.size:
        report.notes.append(
            f"{builder.size - checkpoint.size} entries after the checkpoint are not covered by it"
        )
    return report


def _non_empty(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if line.strip():
            yield line


class _Progress:
    """A one-line progress bar on stderr for large exports."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = total >= 10_000 and stream.isatty()
        self.last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done != self.total:
            return
        self.last = now
        width = 40
        filled = min(width, width * done // self.total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def cli_verify(export: Path, checkpoint: Path, verifier_key: str, old: Path | None) -> int:
    """``gateway trail verify``: 0 only when everything holds."""
    try:
        verifier = Verifier.from_key(_key_text(verifier_key))
        new_cp = read_checkpoint(checkpoint.read_text("utf-8"), verifier, "checkpoint")
        old_cp = (
            read_checkpoint(old.read_text("utf-8"), verifier, "older checkpoint") if old else None
        )
        bar = _Progress(new_cp.size)
        with export.open("r", encoding="utf-8") as lines:
            try:
                report = verify_export(lines, new_cp, old=old_cp, progress=bar)
            finally:
                bar.close()
    except (NoteError, ValueError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except VerificationFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        f"OK: {report.entries} entries, root at {report.size} matches the signed checkpoint"
        + (f", consistent with the older checkpoint at {report.old_size}" if old_cp else "")
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _key_text(value: str) -> str:
    """The verifier key itself, or a file holding it."""
    path = Path(value)
    if "+" not in value and path.is_file():
        return path.read_text("utf-8").strip()
    return value.strip()


# --------------------------------------------------------------------------- monitor


class Alarm(Exception):
    """The log forked or rolled back: what a witness must report."""


def check_progress(old: Checkpoint | None, new: Checkpoint, proof: list[bytes] | None) -> None:
    """Is ``new`` a consistent extension of ``old``? ``proof`` is old.size → new.size."""
    if old is None:
        return
    if new.origin != old.origin:
        raise Alarm(f"origin changed from {old.origin!r} to {new.origin!r}")
    if new.size < old.size:
        raise Alarm(f"rollback: the log shrank from {old.size} to {new.size} entries")
    if new.size == old.size:
        if new.root != old.root:
            raise Alarm(f"fork: two different roots signed for size {new.size}")
        return
    try:
        merkle.verify_consistency(proof or [], old.size, old.root, new.size, new.root)
    except merkle.ProofError as exc:
        raise Alarm(
            f"fork: checkpoint at {new.size} is not consistent with {old.size} ({exc})"
        ) from None


def _read_state(state: Path) -> str | None:
    return state.read_text("utf-8") if state.exists() else None


def _write_state(state: Path, note: str) -> None:
    """Replace the state file atomically: a crash never leaves half a checkpoint."""
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(note, "utf-8")
    os.replace(tmp, state)


async def watch_once(
    http: httpx.AsyncClient, base_url: str, verifier: Verifier, state: Path
) -> str:
    """Fetch, verify against the saved checkpoint, save; returns a one-line status."""
    response = await http.get(f"{base_url}/trail/checkpoint")
    if response.status_code == 404:
        return "no checkpoint yet"
    response.raise_for_status()
    note = response.text
    try:
        new = open_checkpoint(note, verifier)
    except (NoteError, ValueError) as exc:
        raise Alarm(f"checkpoint signature or format does not hold: {exc}") from None
    saved = await asyncio.to_thread(_read_state, state)
    old = open_checkpoint(saved, verifier) if saved is not None else None
    proof: list[bytes] | None = None
    if old is not None and new.size > old.size:
        answer = await http.get(
            f"{base_url}/trail/proof/consistency", params={"old": old.size, "new": new.size}
        )
        answer.raise_for_status()
        proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
    check_progress(old, new, proof)
    await asyncio.to_thread(_write_state, state, note)
    if old is None:
        return f"first checkpoint: {new.size} entries"
    return f"consistent: {old.size} → {new.size} entries"


async def cli_watch(
    base_url: str,
    verifier_key: str,
    state: Path,
    *,
    interval: float,
    count: int | None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """``gateway trail watch``: 2 on an alarm, else 0 (fetch failures only warn)."""
    verifier = Verifier.from_key(_key_text(verifier_key))
    rounds = 0
    async with httpx.AsyncClient(transport=transport, timeout=10.0, trust_env=False) as http:
        while count is None or rounds < count:
            rounds += 1
            try:
                print(await watch_once(http, base_url.rstrip("/"), verifier, state), flush=True)
            except Alarm as alarm:
                print(f"ALARM: {alarm}", file=sys.stderr, flush=True)
                return 2
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                print(f"warning: could not check the log this round ({exc})", file=sys.stderr)
            if count is None or rounds < count:
                await asyncio.sleep(interval)
    return 0
