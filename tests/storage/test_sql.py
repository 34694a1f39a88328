"""``Sql``: multi-row inserts, times, one cursor and prepared statements on PostgreSQL."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
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
        if not conn.broken:
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
    rows = [(i, "x", b"") for i in range(count)]
    planned = sql._chunks("t", ("n", "label", "blob"), rows)
    # Each statement is "INSERT INTO t (columns) VALUES (..), (..)": one "(" per row + 1.
    assert [text.count("(") - 1 for text, _ in planned] == chunks
    assert [v for _, values in planned for v in values] == [v for row in rows for v in row]
    monkeypatch.setattr(sql, "many", lambda *_: pytest.fail("insert_rows used executemany"))
    sql.insert_rows("t", ("n", "label", "blob"), rows)
    assert sorted({size for _, _, size in sql._inserts}) == sorted(set(chunks))
    assert sql.one("SELECT count(*) FROM t") == (count,)


def test_insert_tables_writes_each_table_in_order(sql: Sql) -> None:
    sql.connection.execute("CREATE TEMPORARY TABLE u (k integer NOT NULL)")
    first = [(i, f"r{i}", b"") for i in range(ROWS_PER_INSERT + 3)]
    sql.insert_tables([("t", ("n", "label", "blob"), first), ("u", ("k",), [(7,), (8,)])])
    assert [(n, label) for n, label, _ in sql.all("SELECT n, label, blob FROM t ORDER BY n")] == [
        (n, label) for n, label, _ in first
    ]
    assert sql.all("SELECT k FROM u ORDER BY k") == [(7,), (8,)]
    sql.insert_tables([("u", ("k",), [])])  # nothing to write: no statement


def test_postgresql_insert_tables_is_one_pipeline() -> None:
    for sql in _pg_in_transaction():
        rows = [(f"id{i}", i) for i in range(7)]
        sql.insert_tables([("v", ("id", "n"), rows[:3]), ("v", ("id", "n"), rows[3:])])
        assert sql._pg is not None
        spy = sql._pg._pgconn = _Calls(sql._pg._pgconn)  # type: ignore[assignment]
        more = [(f"more{i}", i) for i in range(7)]
        sql.insert_tables([("v", ("id", "n"), more[:3]), ("v", ("id", "n"), more[3:])])
        assert spy.calls.count("send_query_prepared") == 3  # 3 rows: 2 + 1; 4 rows: 4
        assert spy.calls.count("pipeline_sync") == 1
        assert "exec_prepared" not in spy.calls
        assert sql.one("SELECT count(*) FROM v") == (14,)


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


def test_a_kept_clock_reading_stays_kept_whatever_else_is_converted(sql: Sql) -> None:
    now = datetime(2026, 12, 8, 5, 0, 0, 654321, tzinfo=UTC)
    expiry = now + timedelta(minutes=5)
    sql.keep_time(now)
    kept = sql.time(now)
    assert sql.read_time(kept) == now
    assert sql.read_time(sql.time(expiry)) == expiry  # another time, converted on its own
    assert sql.time(now) is kept  # the kept conversion, not a new one
    other = datetime(2026, 12, 8, 5, 0, 0, 654321, tzinfo=UTC)  # equal, not the kept object
    assert sql.time(other) == kept and sql.time(other) is not kept


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
        sql.command("SAVEPOINT first")  # commands go through psycopg's cursor
        shared = sql._shared
        assert shared is not None
        sql.command("SAVEPOINT before_bad")
        assert sql._shared is shared  # no cursor opened per statement
        with pytest.raises(Exception, match=r"(?i)null"):
            sql.run("INSERT INTO t (n) VALUES (:n)", {"n": None})
        sql.command("ROLLBACK TO SAVEPOINT before_bad")
        assert sql.one("SELECT label FROM t WHERE n = 1") == ("kept",)
        shared.close()  # a closed cursor is replaced, not reused
        sql.command("SAVEPOINT after_close")
        assert sql._shared is not shared
        assert sql.one("SELECT count(*) FROM t") == (1,)


def _pg_in_transaction() -> Iterator[Sql]:
    for sql in _postgresql():
        sql.connection.execute(
            "CREATE TEMPORARY TABLE v (id text PRIMARY KEY, n bigint, at timestamp,"
            " raw bytea, note text, flag boolean)"
        )
        yield sql


def test_postgresql_prepares_each_statement_once_and_reads_what_a_cursor_reads() -> None:
    for sql in _pg_in_transaction():
        at = datetime(2026, 12, 7, 10, 0, 0, 123456)
        row = {"id": "a", "n": 7, "at": at, "raw": b"\x00\xff", "note": None, "flag": True}
        insert = "INSERT INTO v VALUES (:id, :n, :at, :raw, :note, :flag)"
        assert sql.run(insert, row) == 1
        assert sql.run(insert, {**row, "id": "b", "note": "50 % off", "flag": False}) == 1
        query = "SELECT id, n, at, raw, note, flag FROM v WHERE id = :id"
        prepared = sql.one(query, {"id": "a"})
        after_first = sql.prepared
        assert sql.one(query, {"id": "a"}) == prepared
        assert sql.prepared == after_first  # the second run reuses the statement
        # psycopg's cursor, on the same connection, reads the same values and types.
        cursor = sql.connection.execute(
            "SELECT id, n, at, raw, note, flag FROM v WHERE id = %s", ["a"]
        )
        assert prepared == tuple(cursor.fetchone())
        assert prepared == ("a", 7, at, b"\x00\xff", None, True)
        # A name used twice binds one parameter; RETURNING and row counts come back.
        assert sql.all(
            "UPDATE v SET n = n + :step WHERE n < :step + 100 RETURNING id, n", {"step": 1}
        ) == [("a", 8), ("b", 8)]
        assert sql.run("DELETE FROM v WHERE id = :id", {"id": "missing"}) == 0
        assert sql.one("SELECT note FROM v WHERE id = :id", {"id": "b"}) == ("50 % off",)
        assert sql.one("SELECT id FROM v WHERE id = :id", {"id": "missing"}) is None
        assert sql.one("SELECT count(*) FROM v") == (2,)  # no parameters: prepared too


def test_postgresql_prepares_again_when_a_value_dumps_as_another_type() -> None:
    # psycopg dumps a small int as int2 and a large one as int8: one statement each.
    for sql in _pg_in_transaction():
        sql.run("INSERT INTO v (id, n) VALUES (:id, :n)", {"id": "small", "n": 3})
        sql.run("INSERT INTO v (id, n) VALUES (:id, :n)", {"id": "large", "n": 2**40})
        assert sql.prepared == 2
        assert sql.all("SELECT id, n FROM v ORDER BY n") == [("small", 3), ("large", 2**40)]


def test_postgresql_outside_a_transaction_lets_psycopg_start_one() -> None:
    from psycopg import pq

    for sql in _postgresql():
        sql.connection.commit()  # idle: no transaction open
        assert sql.connection.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert sql.one("SELECT :n::int + 1", {"n": 1}) == (2,)
        assert sql.prepared == 0  # ran on psycopg's cursor, which sent BEGIN
        assert sql.connection.pgconn.transaction_status == pq.TransactionStatus.INTRANS
        assert sql.one("SELECT :n::int + 1", {"n": 1}) == (2,)
        assert sql.prepared == 1


def test_postgresql_prepared_failures_raise_psycopgs_errors_and_roll_back() -> None:
    from psycopg import errors

    for sql in _pg_in_transaction():
        sql.run("INSERT INTO v (id) VALUES (:id)", {"id": "kept"})
        sql.command("SAVEPOINT before_bad")
        with pytest.raises(errors.UniqueViolation):
            sql.run("INSERT INTO v (id) VALUES (:id)", {"id": "kept"})
        with pytest.raises(errors.InFailedSqlTransaction):
            sql.one("SELECT id FROM v WHERE id = :id", {"id": "kept"})
        sql.command("ROLLBACK TO SAVEPOINT before_bad")
        assert sql.one("SELECT id FROM v WHERE id = :id", {"id": "kept"}) == ("kept",)
        with pytest.raises(errors.UndefinedColumn):  # a bad text fails at PREPARE
            sql.one("SELECT nope FROM v WHERE id = :id", {"id": "kept"})
        sql.connection.rollback()  # psycopg rolls back what failed behind its back
        assert sql.one("SELECT :n::int", {"n": 5}) == (5,)


def test_postgresql_past_the_cap_statements_go_through_the_cursor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gateway.storage.sql as module

    monkeypatch.setattr(module, "PREPARED_MAX", 1)
    for sql in _pg_in_transaction():
        assert sql.one("SELECT :n::int", {"n": 1}) == (1,)
        assert sql.one("SELECT :n::int * 2", {"n": 2}) == (4,)
        sql.insert_rows("v", ("id", "n"), [("x", 1), ("y", 2)])
        assert sql.prepared == 1
        assert sql.all("SELECT id FROM v WHERE n > :n ORDER BY id", {"n": 0}) == [
            ("x",),
            ("y",),
        ]


def _spun_while(work: Callable[[], object]) -> float:
    """How much of its spinning rate this thread kept while ``work`` ran in another.

    The rate is first taken beside a thread in ``time.sleep``, which lets go
    of the GIL. Work that lets go of it while the server takes 0.3 s keeps
    about 1; work that holds it, about 0.01 (a few switch intervals).
    """
    import threading
    import time

    def spins_per_second(target: Callable[[], object]) -> float:
        worker = threading.Thread(target=target)
        spins, start = 0, time.perf_counter()
        worker.start()
        while worker.is_alive():
            spins += 1
        worker.join()
        return spins / (time.perf_counter() - start)

    free = spins_per_second(lambda: time.sleep(0.3))
    return spins_per_second(work) / free


def test_postgresql_waits_for_the_server_without_holding_the_gil() -> None:
    # The writer runs statements in its thread while the event loop serves
    # requests: libpq must let go of the GIL while the server works.
    for sql in _postgresql():
        sql.one("SELECT pg_sleep(:s)", {"s": 0.0})  # prepare it first
        assert sql.prepared == 1
        assert _spun_while(functools.partial(sql.one, "SELECT pg_sleep(:s)", {"s": 0.3})) > 0.3


def test_postgresql_statements_outlive_rollbacks_and_psycopgs_own_statements() -> None:
    # psycopg deallocates every prepared statement after a rollback once it has
    # prepared any itself; Sql turns its preparation off so that never happens.
    for sql in _pg_in_transaction():
        count = "SELECT count(*) FROM v WHERE n >= :n"
        assert sql.one(count, {"n": 0}) == (0,)
        for _ in range(8):  # past psycopg's default threshold of 5 runs
            sql.connection.execute("SELECT count(*) FROM v WHERE n >= %s", [0])
        sql.command("SAVEPOINT s")
        sql.commands("ROLLBACK TO SAVEPOINT s", "RELEASE SAVEPOINT s")
        assert sql.one(count, {"n": 0}) == (0,)
        sql.connection.commit()
        sql.connection.execute("SELECT 1")
        sql.connection.rollback()
        sql.connection.execute("SELECT 1")
        assert sql.one(count, {"n": 0}) == (0,)
        assert sql.prepared == 1


def test_postgresql_a_statement_deallocated_elsewhere_is_prepared_again() -> None:
    from psycopg import errors

    for sql in _postgresql():
        query = "SELECT :n::int + 1"
        assert sql.one(query, {"n": 0}) == (1,)
        sql.connection.execute("DEALLOCATE ALL")
        with pytest.raises(errors.InvalidSqlStatementName):
            sql.one(query, {"n": 0})
        sql.connection.rollback()
        sql.connection.execute("SELECT 1")  # a new transaction
        assert sql.one(query, {"n": 1}) == (2,)
        assert sql.prepared == 1


def test_run_all_runs_statements_in_order_and_counts_each(sql: Sql) -> None:
    sql.insert_rows("t", ("n", "label", "blob"), [(1, "a", b""), (2, "b", b"")])
    counts = sql.run_all(
        [
            ("INSERT INTO t (n, label) VALUES (:n, :label)", {"n": 3, "label": "c"}),
            ("UPDATE t SET label = :label WHERE n >= :n", {"label": "late", "n": 2}),
            ("DELETE FROM t WHERE n = :n", {"n": 99}),
        ]
    )
    assert counts == [1, 2, 0]  # the UPDATE saw the INSERT before it
    assert sql.all("SELECT n, label FROM t ORDER BY n") == [(1, "a"), (2, "late"), (3, "late")]


def test_run_all_raises_the_first_failure_and_the_unit_rolls_back(sql: Sql) -> None:
    sql.insert_rows("t", ("n", "label", "blob"), [(1, "kept", b"")])
    sql.command("SAVEPOINT unit")
    with pytest.raises(Exception, match=r"(?i)null"):
        sql.run_all(
            [
                ("UPDATE t SET label = :label WHERE n = :n", {"label": "changed", "n": 1}),
                ("INSERT INTO t (n) VALUES (:n)", {"n": None}),
                ("INSERT INTO t (n, label) VALUES (:n, :label)", {"n": 2, "label": "never"}),
            ]
        )
    sql.command("ROLLBACK TO SAVEPOINT unit")
    assert sql.all("SELECT n, label FROM t ORDER BY n") == [(1, "kept")]
    assert sql.run_all([("DELETE FROM t WHERE n = :n", {"n": 1})] * 2) == [1, 0]


class _Calls:
    """A pgconn that counts the calls made on it."""

    def __init__(self, pgconn: Any) -> None:
        self._pgconn = pgconn
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._pgconn, name)
        if callable(attribute):
            self.calls.append(name)
        return attribute


def test_postgresql_run_all_is_one_pipeline_left_clean() -> None:
    from psycopg import errors, pq

    for sql in _pg_in_transaction():
        statement = ("INSERT INTO v (id, n) VALUES (:id, :n)", {"id": "x", "n": 1})
        update = ("UPDATE v SET n = :n WHERE id = :id", {"n": 2, "id": "x"})
        assert sql.run_all([update, statement]) == [0, 1]  # prepares both
        sql.run("DELETE FROM v WHERE id = :id", {"id": "x"})
        assert sql._pg is not None
        spy = sql._pg._pgconn = _Calls(sql._pg._pgconn)  # type: ignore[assignment]
        assert sql.run_all([statement, update]) == [1, 1]
        assert spy.calls.count("send_query_prepared") == 2
        assert spy.calls.count("pipeline_sync") == 1
        assert "exec_prepared" not in spy.calls and "prepare" not in spy.calls
        sql.command("SAVEPOINT s")
        with pytest.raises(errors.UniqueViolation):
            sql.run_all([statement, statement])
        assert sql.connection.pgconn.pipeline_status == pq.PipelineStatus.OFF
        sql.command("ROLLBACK TO SAVEPOINT s")
        assert sql.one("SELECT n FROM v WHERE id = :id", {"id": "x"}) == (2,)


def test_postgresql_run_all_outside_a_transaction_runs_one_by_one() -> None:
    for sql in _postgresql():
        sql.connection.commit()
        assert sql.run_all([("SELECT :n::int", {"n": 1}), ("SELECT :n::int", {"n": 2})]) == [1, 1]


def test_postgresql_run_all_waits_without_holding_the_gil() -> None:
    # libpq's PQgetResult would wait holding the GIL: run_all waits in select().
    for sql in _postgresql():
        sleep = ("SELECT pg_sleep(:s)", {"s": 0.0})
        sql.run_all([sleep, sleep])  # prepared, inside the transaction
        slow = [("SELECT pg_sleep(:s)", {"s": 0.3}), sleep]
        assert _spun_while(functools.partial(sql.run_all, slow)) > 0.3


def test_postgresql_run_all_on_a_lost_connection_raises_the_loss() -> None:
    import psycopg

    for sql in _pg_in_transaction():
        statements = [("SELECT :n::int", {"n": 1}), ("SELECT :n::int + 1", {"n": 1})]
        assert sql.run_all(statements) == [1, 1]
        pid = sql.connection.info.backend_pid
        with psycopg.connect(PG_URL, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError) as lost:
            sql.run_all(statements)
        assert "pipeline" not in str(lost.value)  # the loss, not a pipeline-state error


def test_begin_with_starts_a_transaction_and_returns_each_statements_rows(sql: Sql) -> None:
    sql.insert_rows("t", ("n", "label", "blob"), [(1, "a", b""), (2, "b", b"")])
    sql.connection.commit()
    counted, labels = sql.begin_with(
        [("SELECT count(*) FROM t", {}), ("SELECT label FROM t WHERE n > :n ORDER BY n", {"n": 0})]
    )
    assert counted == [(2,)]
    assert labels == [("a",), ("b",)]


def test_postgresql_begin_with_is_one_pipeline_with_its_begin() -> None:
    from psycopg import pq

    for sql in _pg_in_transaction():
        statements = [("SELECT count(*) FROM v", {}), ("SELECT :n::int", {"n": 7})]
        assert sql.begin_with(statements) == [[(0,)], [(7,)]]  # prepares, in the transaction
        sql.connection.commit()
        assert sql.connection.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert sql._pg is not None
        spy = sql._pg._pgconn = _Calls(sql._pg._pgconn)  # type: ignore[assignment]
        assert sql.begin_with(statements) == [[(0,)], [(7,)]]
        assert spy.calls.count("send_query_params") == 1  # the BEGIN
        assert spy.calls.count("send_query_prepared") == 2
        assert spy.calls.count("pipeline_sync") == 1
        assert sql.connection.pgconn.transaction_status == pq.TransactionStatus.INTRANS
        spy.calls.clear()
        sql.begin_with(statements)  # already in a transaction: no BEGIN
        assert spy.calls.count("send_query_params") == 0


def test_postgresql_begin_with_leaves_other_isolation_levels_to_psycopg() -> None:
    import psycopg
    from psycopg import pq

    for sql in _postgresql():
        sql.connection.commit()
        sql.connection.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        assert sql.begin_with(
            [("SELECT current_setting(:name)", {"name": "transaction_isolation"})]
        ) == [[("serializable",)]]
        assert sql.connection.pgconn.transaction_status == pq.TransactionStatus.INTRANS


def test_postgresql_begin_with_reads_after_the_lock_what_its_holder_committed() -> None:
    # The trail writer's batch: BEGIN, the advisory lock, then max(idx). Each
    # statement has its own snapshot, so a size read after waiting for the
    # lock sees the rows the lock's previous holder committed.
    import threading

    import psycopg

    if not PG_URL:
        pytest.skip("GATEWAY_TEST_DATABASE_URL not set")
    lock = ("SELECT pg_advisory_xact_lock(:k)", {"k": 424242})
    with psycopg.connect(PG_URL) as holder:
        holder.execute("CREATE TABLE IF NOT EXISTS sql_lock_probe (n integer)")
        holder.execute("TRUNCATE sql_lock_probe")
        holder.commit()
        try:
            for sql in _postgresql():
                sql.connection.commit()
                holder.execute("SELECT pg_advisory_xact_lock(%s)", [424242])
                holder.execute("INSERT INTO sql_lock_probe VALUES (1)")
                seen: list[Any] = []

                def wait_then_read(sql: Sql = sql, seen: list[Any] = seen) -> None:
                    seen.append(sql.begin_with([lock, ("SELECT count(*) FROM sql_lock_probe", {})]))

                waiter = threading.Thread(target=wait_then_read)
                waiter.start()
                waiter.join(0.3)
                assert waiter.is_alive()  # waiting for the lock
                holder.commit()
                waiter.join(5)
                assert seen == [[[("",)], [(1,)]]]
        finally:
            holder.rollback()
            holder.execute("DROP TABLE sql_lock_probe")
            holder.commit()


def test_postgresql_writer_connection_never_prepares_statements_of_its_own() -> None:
    # Statements run through SQLAlchemy on the writer's connection before its
    # Sql exists must not leave psycopg with prepared names of its own: it
    # would DEALLOCATE ALL at the next rollback, taking Sql's with them.
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_DATABASE_URL not set")
    from sqlalchemy import make_url, text

    from gateway.storage.engine import create_writer_engine

    engine = create_writer_engine(make_url(PG_URL).set(drivername="postgresql+asyncpg"))
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None and raw.prepare_threshold is None
            for _ in range(8):  # past psycopg's default threshold of 5
                conn.execute(text("SELECT 1 + :n"), {"n": 1})
            sql = Sql(raw, "postgresql")
            assert sql.one("SELECT :n::int", {"n": 3}) == (3,)
            conn.rollback()
            conn.execute(text("SELECT 1"))
            assert sql.one("SELECT :n::int", {"n": 4}) == (4,)
            conn.rollback()
    finally:
        engine.dispose()


def test_all_and_run_reads_before_the_statements_change_anything(sql: Sql) -> None:
    sql.insert_rows("t", ("n", "label", "blob"), [(1, "a", b""), (2, "b", b"")])
    rows, counts = sql.all_and_run(
        ("SELECT n, label FROM t WHERE n >= :n ORDER BY n", {"n": 1}),
        [
            ("UPDATE t SET label = :label WHERE n = :n", {"label": "changed", "n": 1}),
            ("INSERT INTO t (n, label) SELECT n + 10, label FROM t WHERE n = :n", {"n": 2}),
        ],
    )
    assert rows == [(1, "a"), (2, "b")]
    assert counts == [1, 1]
    assert sql.all("SELECT n, label FROM t ORDER BY n") == [(1, "changed"), (2, "b"), (12, "b")]


def test_postgresql_all_and_run_is_one_pipeline() -> None:
    for sql in _pg_in_transaction():
        query = ("SELECT id, n FROM v WHERE n >= :n ORDER BY id", {"n": 0})
        insert = ("INSERT INTO v (id, n) VALUES (:id, :n)", {"id": "a", "n": 1})
        assert sql.all_and_run(query, [insert]) == ([], [1])  # prepares both
        assert sql._pg is not None
        spy = sql._pg._pgconn = _Calls(sql._pg._pgconn)  # type: ignore[assignment]
        assert sql.all_and_run(query, [(insert[0], {"id": "b", "n": 2})]) == ([("a", 1)], [1])
        assert spy.calls.count("pipeline_sync") == 1
        assert "exec_prepared" not in spy.calls
