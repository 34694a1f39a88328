"""Counters and histograms for ``GET /metrics`` (Prometheus text format 0.0.4).

What an operator on call watches: requests and their latency per route,
transfers by outcome (and, for refusals, which check refused them), provider
calls by outcome and latency, the trail writer's batches, and, read from the
database when scraped, the trail's size and the age of its last signed
checkpoint. Counts only: no identifier of a person, a consent or a transfer
ever becomes a label, so nothing here is personal data.

Several processes, one answer. ``gateway serve --workers N`` spreads
connections across N processes, so a scrape lands on any one of them; each
must answer for all. The values therefore live in one shared memory map that
the supervising process creates before it starts the workers: one row of
float64 slots per worker, written only by its worker (the event loop's slots
and the trail writer thread's slots are disjoint), read and summed by whoever
is scraped. A worker that restarts takes its row over, so counters stay
monotonic. An aligned 8-byte store is atomic on the platforms we run on; a
scrape may see one histogram a few observations apart between its buckets
and its sum, never a torn number. Rows written with another layout (a worker
started on other policies) carry another fingerprint and are left out of the
sum, and ``gateway_metrics_workers`` says how many rows were summed.

A single process (tests, the demo, ``--workers 1``) keeps its row in private
memory. Several hosts each expose their own ``/metrics``; Prometheus sums
across instances.

The layout, a fixed slot for every series, is computed from the route
templates and the policy's provider ids, so it is the same in every worker
and no label value can grow the map at run time.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Prometheus' default latency buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOT = 8  # bytes per float64
ROW_SLOTS = 16384  # capacity of one worker's row (128 KiB); a layout must fit
ROW_BYTES = ROW_SLOTS * SLOT
_HEADER = 2  # slot 0: layout fingerprint, slot 1: process id

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
UNMATCHED = "unmatched"  # a request no route matched (404 / 405 pages)

# Transfer outcomes, and the check of the transfer path that refused one.
TRANSFER_OUTCOMES = ("completed", "no_record", "denied", "provider_failed", "trail_unavailable")
DENIAL_CHECKS = {1: "token", 2: "dpop", 3: "consent", 4: "policy", 5: "use"}

# What a provider call ended with (gateway.relay).
PROVIDER_OUTCOMES = (
    "ok",
    "no_record",
    "provider_timeout",
    "provider_unavailable",
    "provider_error",
    "provider_response_not_json",
    "provider_response_too_large",
)


class MetricsError(Exception):
    """The layout does not fit a row, or the shared map cannot be used."""


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str  # "counter" | "histogram"
    help: str
    labels: tuple[str, ...]
    series: tuple[tuple[str, ...], ...]

    @property
    def width(self) -> int:
        """Slots per series: a counter's value; a histogram's buckets, +Inf and sum."""
        return 1 if self.kind == "counter" else len(BUCKETS) + 2


def _families(handlers: Sequence[str], providers: Sequence[str]) -> list[_Family]:
    routes = tuple(dict.fromkeys([*handlers, UNMATCHED]))
    return [
        _Family(
            "gateway_http_requests_total",
            "counter",
            "HTTP requests answered, by route template and status class.",
            ("handler", "code"),
            tuple((h, c) for h in routes for c in STATUS_CLASSES),
        ),
        _Family(
            "gateway_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its last response byte, by route template.",
            ("handler",),
            tuple((h,) for h in routes),
        ),
        _Family(
            "gateway_transfers_total",
            "counter",
            "Transfers by outcome (GET /data/...).",
            ("outcome",),
            tuple((o,) for o in TRANSFER_OUTCOMES),
        ),
        _Family(
            "gateway_transfer_denials_total",
            "counter",
            "Refused transfers, by the check that refused them.",
            ("check",),
            tuple((c,) for c in DENIAL_CHECKS.values()),
        ),
        _Family(
            "gateway_provider_requests_total",
            "counter",
            "Calls to data providers, by provider and outcome.",
            ("provider", "outcome"),
            tuple((p, o) for p in providers for o in PROVIDER_OUTCOMES),
        ),
        _Family(
            "gateway_provider_request_duration_seconds",
            "histogram",
            "Time a data provider took to answer, whatever the outcome.",
            ("provider",),
            tuple((p,) for p in providers),
        ),
        _Family(
            "gateway_trail_batches_total",
            "counter",
            "Trail writer transactions committed (group commit: many units each).",
            (),
            ((),),
        ),
        _Family(
            "gateway_trail_batches_failed_total",
            "counter",
            "Trail batches that could not be committed (every unit in them failed: see the logs).",
            (),
            ((),),
        ),
        _Family(
            "gateway_trail_batches_retried_total",
            "counter",
            "Trail batches rolled back and rerun unit by unit after a unit failed.",
            (),
            ((),),
        ),
        _Family(
            "gateway_trail_units_total",
            "counter",
            "Units of work run by the trail writer, by result.",
            ("result",),
            (("committed",), ("failed",)),
        ),
    ]


class Layout:
    """Where every series lives in a row; identical in every worker given the same inputs."""

    def __init__(self, handlers: Sequence[str], providers: Sequence[str]) -> None:
        self.families = _families(handlers, providers)
        self.offsets: dict[tuple[str, tuple[str, ...]], int] = {}
        at = _HEADER
        for family in self.families:
            for series in family.series:
                self.offsets[(family.name, series)] = at
                at += family.width
        if at > ROW_SLOTS:
            raise MetricsError(f"the metrics layout needs {at} slots, a row has {ROW_SLOTS}")
        self.size = at
        digest = hashlib.sha256(repr([(f.name, f.series) for f in self.families]).encode())
        # 48 bits: exact in a float64, and a collision is as good as impossible.
        self.fingerprint = float(int.from_bytes(digest.digest()[:6], "big"))

    def offset(self, family: str, *labels: str) -> int:
        return self.offsets[(family, labels)]


# --------------------------------------------------------------- shared rows


@dataclass(frozen=True)
class Shared:
    """The map a supervisor created: its file, this worker's row and the row count."""

    path: str
    row: int
    rows: int


_shared: Shared | None = None


def create_shared_file(rows: int) -> str:
    """Create the zeroed map for ``rows`` workers; the supervisor removes it at exit."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 (tmpfs, not a temp name)
    fd, path = tempfile.mkstemp(prefix="gateway-metrics-", dir=directory)
    try:
        os.ftruncate(fd, rows * ROW_BYTES)
    finally:
        os.close(fd)
    return path


def use_shared(shared: Shared | None) -> None:
    """Make the next :func:`create` in this process use a supervisor's map."""
    global _shared
    _shared = shared


def create(handlers: Sequence[str], providers: Sequence[str]) -> Metrics:
    """This process's metrics: on the shared map if a supervisor gave one, else private."""
    layout = Layout(handlers, providers)
    if _shared is None:
        return Metrics(layout, memoryview(bytearray(ROW_BYTES)), row=0, rows=1)
    with Path(_shared.path).open("r+b") as file:
        mapped = mmap.mmap(file.fileno(), _shared.rows * ROW_BYTES)
    return Metrics(layout, memoryview(mapped), row=_shared.row, rows=_shared.rows)


# ------------------------------------------------------------------- metrics


class Metrics:
    """Hot-path recording (a few slot additions) and the text exposition."""

    def __init__(self, layout: Layout, memory: memoryview, *, row: int, rows: int) -> None:
        self.layout = layout
        self._memory = memory
        self._rows = [memory[r * ROW_BYTES : (r + 1) * ROW_BYTES].cast("d") for r in range(rows)]
        own = self._rows[row]
        # Taking a row over (a restarted worker) keeps its counts if the layout
        # is the same; a row of another layout starts again from zero.
        if own[0] != layout.fingerprint:
            own[0 : layout.size] = memoryview(bytearray(layout.size * SLOT)).cast("d")
            own[0] = layout.fingerprint
        own[1] = float(os.getpid())
        self._own = own
        off = layout.offsets
        self._http = {
            (key[1][0], key[1][1]): at
            for key, at in off.items()
            if key[0] == "gateway_http_requests_total"
        }
        self._http_time = {
            key[1][0]: at
            for key, at in off.items()
            if key[0] == "gateway_http_request_duration_seconds"
        }
        self._transfers = {
            key[1][0]: at for key, at in off.items() if key[0] == "gateway_transfers_total"
        }
        self._denials = {
            number: off[("gateway_transfer_denials_total", (check,))]
            for number, check in DENIAL_CHECKS.items()
        }
        self._provider = {
            (key[1][0], key[1][1]): at
            for key, at in off.items()
            if key[0] == "gateway_provider_requests_total"
        }
        self._provider_time = {
            key[1][0]: at
            for key, at in off.items()
            if key[0] == "gateway_provider_request_duration_seconds"
        }
        self._batches = off[("gateway_trail_batches_total", ())]
        self._retried = off[("gateway_trail_batches_retried_total", ())]
        self._batches_failed = off[("gateway_trail_batches_failed_total", ())]
        self._units_ok = off[("gateway_trail_units_total", ("committed",))]
        self._units_failed = off[("gateway_trail_units_total", ("failed",))]
        self.started = time.time()

    # Recording: each is a dictionary lookup and one to three slot additions.

    def _observe(self, at: int, seconds: float) -> None:
        row = self._own
        row[at + bisect.bisect_left(BUCKETS, seconds)] += 1
        row[at + len(BUCKETS) + 1] += seconds

    def request(self, handler: str, status: int, seconds: float) -> None:
        if handler not in self._http_time:
            handler = UNMATCHED
        code = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
        self._own[self._http[(handler, code)]] += 1
        self._observe(self._http_time[handler], seconds)

    def transfer(self, outcome: str) -> None:
        self._own[self._transfers[outcome]] += 1

    def denial(self, step: int) -> None:
        self._own[self._transfers["denied"]] += 1
        self._own[self._denials[step]] += 1

    def provider_call(self, provider: str, outcome: str, seconds: float) -> None:
        at = self._provider.get((provider, outcome))
        if at is None:  # a provider the layout does not know: not counted rather than wrong
            return
        self._own[at] += 1
        self._observe(self._provider_time[provider], seconds)

    def trail_batch(self, committed: int, failed: int) -> None:
        row = self._own
        row[self._batches] += 1
        row[self._units_ok] += committed
        row[self._units_failed] += failed

    def trail_batch_failed(self, units: int) -> None:
        self._own[self._batches_failed] += 1
        self._own[self._units_failed] += units

    def trail_retry(self) -> None:
        """Called from the writer's thread: its own slot, never the event loop's."""
        self._own[self._retried] += 1

    # Reading.

    def totals(self) -> tuple[list[float], int]:
        """Slot-wise sums over the rows of this layout, and how many rows that was."""
        size = self.layout.size
        summed = [0.0] * size
        workers = 0
        for row in self._rows:
            if row[0] != self.layout.fingerprint:
                continue
            workers += 1
            for i, value in enumerate(row[_HEADER:size], start=_HEADER):
                if value:
                    summed[i] += value
        return summed, workers

    def value(self, family: str, *labels: str) -> float:
        """One counter's sum over the workers (tests and the CLI read it)."""
        return self.totals()[0][self.layout.offset(family, *labels)]

    def render(self, gauges: Iterable[Gauge] = ()) -> str:
        summed, workers = self.totals()
        out: list[str] = []
        for family in self.layout.families:
            out += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
            for series in family.series:
                at = self.layout.offsets[(family.name, series)]
                labels = list(zip(family.labels, series, strict=True))
                if family.kind == "counter":
                    out.append(_sample(family.name, labels, summed[at]))
                    continue
                base = family.name.removesuffix("_seconds")
                assert base != family.name
                cumulative = 0.0
                for i, bound in enumerate((*BUCKETS, float("inf"))):
                    cumulative += summed[at + i]
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    out.append(_sample(f"{family.name}_bucket", [*labels, ("le", le)], cumulative))
                out.append(_sample(f"{family.name}_sum", labels, summed[at + len(BUCKETS) + 1]))
                out.append(_sample(f"{family.name}_count", labels, cumulative))
        for gauge in (
            Gauge("gateway_metrics_workers", "Worker processes summed here.", workers),
            *gauges,
        ):
            out += [f"# HELP {gauge.name} {gauge.help}", f"# TYPE {gauge.name} gauge"]
            out.append(_sample(gauge.name, list(gauge.labels), gauge.value))
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Gauge:
    """A value read at scrape time (from the database, or this process)."""

    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _sample(name: str, labels: list[tuple[str, str]], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {_number(value)}"
