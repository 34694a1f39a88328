"""``Sql.insert_rows``: multi-row chunks plus an executemany remainder, rows kept in order."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.storage.sql import ROWS_PER_INSERT, Sql
from tests.conftest import PG_URL


def _sqlite() -> Iterator[Sql]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (n INTEGER NOT NULL, label TEXT, blob BLOB)")
    try:
        yield Sql(conn, "sqlite")
    finally:
        conn.close()


def _postgresql() -> Iterator[Sql]:
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_DATABASE_URL not set")
    import psycopg

    conn = psycopg.connect(PG_URL)
    conn.execute("CREATE TEMPORARY TABLE t (n integer NOT NULL, label text, blob bytea)")
    try:
        yield Sql(conn, "postgresql")
    finally:
        conn.rollback()
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql(request: pytest.FixtureRequest) -> Iterator[Sql]:
    yield from (_sqlite() if request.param == "sqlite" else _postgresql())


@pytest.mark.parametrize(
    "count",
    [0, 1, ROWS_PER_INSERT - 1, ROWS_PER_INSERT, ROWS_PER_INSERT + 1, 2 * ROWS_PER_INSERT + 7],
)
def test_insert_rows_stores_every_row_in_order(sql: Sql, count: int) -> None:
    rows: list[tuple[Any, ...]] = [
        (i, None if i % 5 == 0 else f"row {i}", bytes([i % 256]) * 3) for i in range(count)
    ]
    sql.insert_rows("t", ("n", "label", "blob"), rows)
    stored = [(n, label, bytes(blob)) for n, label, blob in sql.all("SELECT n, label, blob FROM t")]
    assert stored == rows


@pytest.mark.parametrize(
    ("count", "chunks"),
    [
        (1, [1]),
        (45, [32, 8, 4, 1]),
        (ROWS_PER_INSERT, [ROWS_PER_INSERT]),
        (2 * ROWS_PER_INSERT + 3, [ROWS_PER_INSERT, ROWS_PER_INSERT, 2, 1]),
    ],
)
def test_insert_rows_takes_one_statement_per_chunk(
    sql: Sql, count: int, chunks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No executemany: a statement per chunk, whole chunks, then halving powers of two.
    executed: list[int] = []
    real_cursor = sql._cursor

    class Counting:
        def __init__(self, cursor: Any) -> None:
            self._cursor = cursor

        def execute(self, text: str, params: Any) -> Any:
            executed.append(text.count("("))
            return self._cursor.execute(text, params)

        def executemany(self, text: str, rows: Any) -> Any:
            raise AssertionError("insert_rows must not fall back to executemany")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cursor, name)

    monkeypatch.setattr(sql, "_cursor", lambda: Counting(real_cursor()))
    monkeypatch.setattr(sql, "_done", lambda cursor: Sql._done(sql, cursor._cursor))
    sql.insert_rows("t", ("n", "label", "blob"), [(i, "x", b"") for i in range(count)])
    # Each statement is "INSERT INTO t (columns) VALUES (..), (..)": one "(" per row + 1.
    assert [n - 1 for n in executed] == chunks
    assert sorted({size for _, _, size in sql._inserts}) == sorted(set(chunks))
    assert sql.one("SELECT count(*) FROM t") == (count,)


def test_insert_rows_failure_leaves_the_error_to_the_caller(sql: Sql) -> None:
    rows: list[tuple[Any, ...]] = [(i, "x", b"") for i in range(ROWS_PER_INSERT)]
    rows[10] = (None, "bad", b"")  # n is NOT NULL
    with pytest.raises(Exception, match=r"(?i)null"):
        sql.insert_rows("t", ("n", "label", "blob"), rows)


def test_time_converts_each_clock_reading_and_refuses_naive_ones(sql: Sql) -> None:
    first = datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC)
    later = first + timedelta(seconds=1)
    paris = first.astimezone(timezone(timedelta(hours=1)))
    stored = [sql.time(first), sql.time(first), sql.time(later), sql.time(paris)]
    assert stored[0] == stored[1] == stored[3]  # the same instant, however written
    assert stored[2] != stored[0]
    assert sql.read_time(stored[2]) == later
    with pytest.raises(ValueError, match="naive"):
        sql.time(first.replace(tzinfo=None))


def test_results_stay_apart_whichever_cursor_runs_them(sql: Sql) -> None:
    """On PostgreSQL one cursor runs everything: each call's result is its own."""
    sql.insert_rows("t", ("n", "label", "blob"), [(i, f"r{i}", b"") for i in range(5)])
    every = sql.all("SELECT n FROM t ORDER BY n")
    first = sql.one("SELECT n, label FROM t WHERE n = :n", {"n": 3})
    changed = sql.run("UPDATE t SET label = :label WHERE n < :n", {"label": "low", "n": 2})
    sql.command("SAVEPOINT probe")
    sql.commands("RELEASE SAVEPOINT probe", "SAVEPOINT probe")
    nothing = sql.one("SELECT n FROM t WHERE n = :n", {"n": 99})
    assert every == [(0,), (1,), (2,), (3,), (4,)]
    assert first == (3, "r3")
    assert changed == 2
    assert nothing is None
    assert sql.all("SELECT label FROM t WHERE n < 2") == [("low",), ("low",)]


def test_postgresql_keeps_one_cursor_and_survives_a_failed_statement() -> None:
    for sql in _postgresql():
        sql.run("INSERT INTO t (n, label) VALUES (:n, :label)", {"n": 1, "label": "kept"})
        shared = sql._shared
        assert shared is not None
        sql.one("SELECT count(*) FROM t")
        assert sql._shared is shared  # no cursor opened per statement
        sql.command("SAVEPOINT before_bad")
        with pytest.raises(Exception, match=r"(?i)null"):
            sql.run("INSERT INTO t (n) VALUES (:n)", {"n": None})
        sql.command("ROLLBACK TO SAVEPOINT before_bad")
        assert sql.one("SELECT label FROM t WHERE n = 1") == ("kept",)
        shared.close()  # a closed cursor is replaced, not reused
        assert sql.one("SELECT count(*) FROM t") == (1,)
        assert sql._shared is not shared
