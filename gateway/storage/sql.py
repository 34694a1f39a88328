"""Plain SQL on a DB-API connection, for the statements every transfer runs.

SQLAlchemy Core costs about 100 µs of CPU per statement here (statement
coercion, cache key, execution context, result set-up), the driver alone
15–40 µs (bench/README.md). The trail writer's batches and the transfer path's
units of work run a handful of fixed statements per request, so they use
:class:`Sql`: hand-written SQL with ``:name`` parameters, executed on the raw
connection beneath the writer's SQLAlchemy connection (same transaction).
Everything else keeps SQLAlchemy Core, whose cost is irrelevant there.

The two engines differ in three things, all handled here:

- parameters: sqlite3 takes ``:name`` as written; psycopg wants ``%(name)s``
  (converted once per statement text, then cached);
- times: the schema stores naive UTC (``UtcDateTime``); on SQLite that is the
  text SQLAlchemy writes (``YYYY-MM-DD HH:MM:SS.ffffff``, which also sorts and
  compares correctly), on PostgreSQL a ``timestamp`` — :meth:`Sql.time` and
  :meth:`Sql.read_time` convert both ways, so rows written here read back
  through SQLAlchemy and the other way round;
- ``INSERT ... ON CONFLICT DO NOTHING`` and ``RETURNING`` are spelled the same
  on both (SQLite ≥ 3.35), so statements need no per-engine text.

On PostgreSQL, inside a transaction, the statements with parameters and the
batch's INSERTs go to libpq's extended protocol directly: each statement text
is prepared once per connection (and per parameter types, as psycopg's own
automatic preparation does), then run with ``PQexecPrepared``, with psycopg's
``Transformer`` adapting the values both ways, so every value is dumped and
loaded exactly as a psycopg cursor would. That skips psycopg's cursor
machinery — its query conversion, its non-blocking send-and-poll loop, its
result set-up — which cost 30–40 µs of CPU per statement on the writer's
thread, inside the trail lock (``bench/README.md``, "psycopg's own layer").
libpq releases the GIL while it waits for the server. Statements that do not
depend on each other's results can share one round trip (a libpq pipeline:
:meth:`Sql.run_all`, :meth:`Sql.all_and_run`, :meth:`Sql.begin_with`,
:meth:`Sql.insert_tables`). Outside a transaction, and for ``commands`` and
``many``, psycopg's cursor runs the statement, so that psycopg starts
transactions as the connection's settings ask.

That cursor is one, kept for the connection: opening and closing a psycopg
cursor costs about 15 µs of CPU per statement (``bench/README.md``). psycopg's
client-side cursor holds a statement's whole result once ``execute`` returns,
so reusing it loses nothing. On SQLite a cursor is a few hundred nanoseconds
and a closed one finishes its statement at once (a half-read ``SELECT`` left
open on a shared cursor would keep its read going), so each call there keeps
its own.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import select
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"

# Rows per multi-row INSERT (insert_rows): 64 trail entries bind 576
# parameters, far below SQLite's 32,766 and PostgreSQL's 65,535.
ROWS_PER_INSERT = 64

# PostgreSQL: at most this many statements prepared per connection; past it a
# new text or parameter typing runs through psycopg's cursor instead. The
# transfer path and the trail writer use a few dozen.
PREPARED_MAX = 256

# Prepared statement names, unique in the process: a connection never sees one
# twice, even if it outlives an Sql that prepared on it.
_names = itertools.count()

Params = Mapping[str, Any]
Row = tuple[Any, ...]
Statement = tuple[str, Params]  # a ``:name`` text and its parameters


class Sql:
    """Statements with ``:name`` parameters on one DB-API connection."""

    def __init__(self, dbapi_connection: Any, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported dialect {dialect!r}")
        self._conn = dbapi_connection
        self.dialect = dialect
        self._texts: dict[str, str] = {}
        self._inserts: dict[tuple[str, tuple[str, ...], int], str] = {}
        self._kept_time: tuple[datetime, Any] | None = None  # keep_time's
        # PostgreSQL: the one cursor every statement runs on (module docstring).
        self._share_cursor = dialect == "postgresql"
        self._shared: Any = None
        self._pg = _Prepared(dbapi_connection) if dialect == "postgresql" else None

    @property
    def connection(self) -> Any:
        """The DB-API connection the statements run on."""
        return self._conn

    @property
    def prepared(self) -> int:
        """How many statements this object has prepared on PostgreSQL (0 on SQLite)."""
        return len(self._pg.names) if self._pg is not None else 0

    def _cursor(self) -> Any:
        shared = self._shared
        if shared is not None and not shared.closed:
            return shared
        cursor = self._conn.cursor()
        if self._share_cursor:
            self._shared = cursor
        return cursor

    def _done(self, cursor: Any) -> None:
        if cursor is not self._shared:
            cursor.close()

    def _text(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        converted = self._texts.get(sql)
        if converted is None:
            # psycopg's pyformat: a literal % must be doubled first.
            converted = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
            self._texts[sql] = converted
        return converted

    def _execute(
        self, sql: str, params: Params | None, *, rows: bool
    ) -> tuple[int, list[Row] | None]:
        """Run one statement: its row count and, if ``rows``, its rows."""
        pg = self._pg
        if pg is not None:
            done = pg.execute_named(sql, params or {}, rows=rows)
            if done is not None:
                return done
        cursor = self._cursor()
        try:
            cursor.execute(self._text(sql), params or {})
            found = [tuple(r) for r in cursor.fetchall()] if rows else None
            return int(cursor.rowcount), found
        finally:
            self._done(cursor)

    def run(self, sql: str, params: Params | None = None) -> int:
        """Execute one statement; return the number of rows it changed."""
        return self._execute(sql, params, rows=False)[0]

    def run_all(self, statements: Sequence[Statement]) -> list[int]:
        """Execute statements in order, in one round trip; their row counts.

        On PostgreSQL, inside a transaction, they go as one libpq pipeline:
        sent together, their results read after one wait. The first failure
        is raised once every result is in (the ones after it were skipped,
        and the transaction is aborted, as if they had run one by one). On
        SQLite they run one by one, in process. For statements whose
        parameters do not depend on each other's results; a caller that
        must not run the later ones when an earlier one changes nothing
        (a replayed jti, say) runs them this way only if its failure undoes
        the unit, as a unit of work's failure does.
        """
        pg = self._pg
        if pg is not None and len(statements) > 1:
            done = pg.pipeline(statements)
            if done is not None:
                return [count for count, _ in done]
        return [self.run(sql, params) for sql, params in statements]

    def all_and_run(
        self, query: Statement, statements: Sequence[Statement]
    ) -> tuple[list[Row], list[int]]:
        """The rows of ``query``, then the row counts of ``statements``: one round trip.

        :meth:`run_all` with a query in front (same failure rules): the query
        reads the database as it was before the statements run.
        """
        pg = self._pg
        if pg is not None and statements:
            done = pg.pipeline([query, *statements], rows=True)
            if done is not None:
                return done[0][1] or [], [count for count, _ in done[1:]]
        return self.all(*query), [self.run(sql, params) for sql, params in statements]

    def begin_with(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """Start the transaction if none is open, then run ``statements``; their rows.

        On PostgreSQL the ``BEGIN`` and the statements go as one pipeline (the
        trail writer's batch opens with it: ``BEGIN``, the trail lock, the log's
        size read once the lock is held, in one round trip instead of three).
        Each statement still takes its own snapshot, so a read after a lock
        sees what was committed before the lock was granted. On SQLite the
        statements run one by one in the transaction SQLAlchemy began.
        """
        pg = self._pg
        if pg is not None:
            done = pg.pipeline(statements, rows=True, begin=True)
            if done is not None:
                return [found or [] for _, found in done]
        return [self.all(sql, params) for sql, params in statements]

    def command(self, sql: str) -> None:
        """A statement without parameters or result (``SAVEPOINT``, ``RELEASE``)."""
        self.commands(sql)

    def commands(self, *statements: str) -> None:
        """Statements without parameters or result; one round trip on PostgreSQL.

        No parameter style to convert (a statement without parameters has
        none). psycopg sends such a text with the simple query protocol, which
        takes several statements separated by semicolons; sqlite3 runs one per
        call, on the connection itself, in process, where a call costs
        microseconds.
        """
        if self.dialect == "postgresql":
            self._cursor().execute("; ".join(statements))
        else:
            for statement in statements:
                self._conn.execute(statement)

    def one(self, sql: str, params: Params | None = None) -> Row | None:
        """The first row of a query (or of ``RETURNING``), or None."""
        found = self._execute(sql, params, rows=True)[1]
        return found[0] if found else None

    def all(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._execute(sql, params, rows=True)[1] or []

    def many(self, sql: str, rows: Sequence[Params]) -> None:
        """One statement for many parameter sets (a batch's inserts)."""
        if not rows:
            return
        cursor = self._cursor()
        try:
            cursor.executemany(self._text(sql), rows)
        finally:
            self._done(cursor)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """``INSERT`` many rows given as tuples in ``columns`` order.

        The rows go as multi-row ``INSERT`` statements: whole chunks of
        :data:`ROWS_PER_INSERT` rows, then the rest in chunks of halving
        powers of two (45 rows: 32 + 8 + 4 + 1), so that a batch takes a
        handful of statements and only seven statement texts exist per table
        (each a prepared statement on PostgreSQL). An executemany would take
        one step per row: on SQLite the driver lets go of the GIL around each,
        on PostgreSQL psycopg pipelines the rows through Python one by one
        (a fifth of the trail writer thread's samples, bench/README.md).
        Positional parameters bind in about half the time a dict of names
        takes. ``table`` and ``columns`` are the caller's constants, never
        input.
        """
        self.insert_tables([(table, columns, rows)])

    def insert_tables(
        self, inserts: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]]
    ) -> None:
        """:meth:`insert_rows` for several ``(table, columns, rows)``, in that order.

        On PostgreSQL, inside a transaction, every chunk of every table goes in
        one pipeline: one round trip for a trail batch's entries and hashes
        (eight or so statements), instead of one each.
        """
        chunks = [chunk for insert in inserts for chunk in self._chunks(*insert)]
        pg = self._pg
        if (
            pg is not None
            and len(chunks) > 1
            and pg.pipeline_texts([(text, values, True) for text, values in chunks]) is not None
        ):
            return
        for text, values in chunks:
            self._insert(text, values)

    def _chunks(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> list[tuple[str, list[Any]]]:
        """The multi-row INSERTs for ``rows`` (see :meth:`insert_rows`) and their values."""
        chunks = []
        total = len(rows)
        start, size = 0, ROWS_PER_INSERT
        while start < total:
            while size > total - start:
                size //= 2
            values = [v for row in rows[start : start + size] for v in row]
            chunks.append((self._insert_text(table, columns, size), values))
            start += size
        return chunks

    def _insert(self, statement: str, values: list[Any]) -> None:
        """One multi-row INSERT with positional parameters."""
        pg = self._pg
        if pg is not None and pg.execute(statement, values, rows=False) is not None:
            return
        cursor = self._cursor()
        try:
            cursor.execute(statement, values)
        finally:
            self._done(cursor)

    def _insert_text(self, table: str, columns: Sequence[str], count: int) -> str:
        key = (table, tuple(columns), count)
        statement = self._inserts.get(key)
        if statement is None:
            mark = "?" if self.dialect == "sqlite" else "%s"
            values = "(" + ", ".join(mark for _ in columns) + ")"
            statement = (
                f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 (constants only)
                f" VALUES {', '.join(values for _ in range(count))}"
            )
            self._inserts[key] = statement
        return statement

    def keep_time(self, value: datetime) -> None:
        """Convert ``value`` once for every later :meth:`time` of it (a batch's clock reading).

        The trail writer keeps its batch's ``now``, which all of the batch's
        units pass; other times (a proof's expiry) are converted per call and
        never take its place.
        """
        self._kept_time = (value, self._stored_time(value))

    def time(self, value: datetime) -> Any:
        """A UTC datetime as the ``UtcDateTime`` columns store it."""
        kept = self._kept_time
        if kept is not None and kept[0] is value:
            return kept[1]
        return self._stored_time(value)

    def _stored_time(self, value: datetime) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.strftime(_SQLITE_TIME) if self.dialect == "sqlite" else naive

    def read_time(self, value: Any) -> datetime:
        """The inverse of :meth:`time`, for a value read back from a row."""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"not a stored time: {type(value).__name__}")
        return value.replace(tzinfo=UTC)

    @staticmethod
    def in_list(name: str, values: Iterable[Any]) -> tuple[str, dict[str, Any]]:
        """``(:name_0, :name_1, ...)`` and its parameters, for ``IN``."""
        params = {f"{name}_{i}": v for i, v in enumerate(values)}
        return "(" + ", ".join(f":{k}" for k in params) + ")", params


class _Prepared:
    """PostgreSQL statements prepared once and run with ``PQexecPrepared``.

    Each call returns None where the statement should go through psycopg's
    cursor instead: no transaction open yet (psycopg starts it, as the
    connection's settings ask) or the cap on prepared statements reached.
    Values are dumped by psycopg's ``Transformer`` with its automatic formats,
    so a statement is prepared per text and per the parameter types those
    dumps carry (an int dumps as int2, int4, int8 or numeric by its size),
    exactly the key psycopg's own automatic preparation uses.
    """

    def __init__(self, conn: Any) -> None:
        from psycopg import errors, pq
        from psycopg.adapt import PyFormat, Transformer

        # psycopg's own automatic preparation off: after any ROLLBACK (or DROP,
        # ALTER) psycopg sends DEALLOCATE ALL if it prepared anything itself,
        # which would take these statements with its own. This connection's
        # repeated statements are prepared here instead.
        conn.prepare_threshold = None
        self._conn = conn
        self._pgconn = conn.pgconn
        self._tx = Transformer(conn)
        self._idle = pq.TransactionStatus.IDLE
        self._auto = PyFormat.AUTO
        self._in_transaction = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)
        self._ok = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
        self._sync = pq.ExecStatus.PIPELINE_SYNC
        self._error_from = errors.error_from_result
        self._operational = errors.OperationalError
        self._formats: dict[int, list[Any]] = {}
        # ":name" text -> ($n text, the names in $n order)
        self._named: dict[str, tuple[str, tuple[str, ...]]] = {}
        # a "%s" or "$n" text -> the one with $n, as bytes
        self._dollar: dict[str, bytes] = {}
        # ($n text, parameter types) -> prepared statement name
        self.names: dict[tuple[bytes, tuple[int, ...] | None], bytes] = {}

    def execute_named(
        self, sql: str, params: Params, *, rows: bool
    ) -> tuple[int, list[Row] | None] | None:
        text, values = self._numbered(sql, params)
        return self.execute(text, values, rows=rows, marks=False)

    def _numbered(self, sql: str, params: Params) -> tuple[str, list[Any]]:
        """The ``$n`` text of a ``:name`` one, and the values in ``$n`` order."""
        named = self._named.get(sql)
        if named is None:
            order: list[str] = []

            def number(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in order:
                    order.append(name)
                return f"${order.index(name) + 1}"

            named = self._named[sql] = (_NAMED.sub(number, sql), tuple(order))
        text, order_ = named
        return text, [params[name] for name in order_]

    def execute(
        self, text: str, values: Sequence[Any], *, rows: bool, marks: bool = True
    ) -> tuple[int, list[Row] | None] | None:
        """Run ``text`` with ``values``: ``%s`` placeholders if ``marks``, else ``$n``.

        ``%s`` texts are :meth:`Sql.insert_rows`' own, built from constants
        (no ``%s`` inside a literal to mistake for a placeholder).
        """
        pgconn = self._pgconn
        if pgconn.transaction_status not in self._in_transaction:
            return None
        ready = self._ready(text, values, marks=marks)
        if ready is None:
            return None
        result = pgconn.exec_prepared(*ready)
        self._check(result)
        return self._outcome(result, rows=rows)

    def _outcome(self, result: Any, *, rows: bool) -> tuple[int, list[Row] | None]:
        """A checked result's row count and, if ``rows``, its rows as psycopg loads them."""
        found = None
        if rows:
            tx = self._tx
            tx.set_pgresult(result)
            found = tx.load_rows(0, result.ntuples, tuple)
        return result.command_tuples or 0, found

    def _ready(
        self, text: str, values: Sequence[Any], *, marks: bool
    ) -> tuple[bytes, Sequence[Any], list[Any]] | None:
        """The prepared statement's name, the dumped values and their formats.

        Prepares the statement first if this text and these types are new
        (a round trip of its own, once); None past :data:`PREPARED_MAX`.
        """
        query = self._dollar.get(text)
        if query is None:
            dollars = text
            if marks:
                numbers = itertools.count(1)
                dollars = re.sub(r"%s", lambda _: f"${next(numbers)}", text)
            query = self._dollar[text] = dollars.encode()
        tx = self._tx
        count = len(values)
        formats = self._formats.get(count)
        if formats is None:
            formats = self._formats[count] = [self._auto] * count
        dumped = tx.dump_sequence(values, formats)
        key = (query, tx.types)
        name = self.names.get(key)
        if name is None:
            if len(self.names) >= PREPARED_MAX:
                return None
            name = f"_gw_{next(_names)}".encode()
            self._check(self._pgconn.prepare(name, query, tx.types))
            self.names[key] = name
        return name, dumped, list(tx.formats or ())  # copied: the next dump reuses them

    def pipeline(
        self, statements: Sequence[Statement], *, rows: bool = False, begin: bool = False
    ) -> list[tuple[int, list[Row] | None]] | None:
        """Run ``:name`` statements as one pipeline (see Sql.run_all and Sql.begin_with).

        Each statement's row count and, with ``rows``, its rows. With
        ``begin``, a connection with no transaction open starts one first, in
        the same pipeline, as psycopg would (a plain ``BEGIN``: None where the
        connection asks for another isolation level, read-only or deferrable).
        """
        items = [(*self._numbered(sql, params), False) for sql, params in statements]
        return self.pipeline_texts(items, rows=rows, begin=begin)

    def pipeline_texts(
        self,
        items: Sequence[tuple[str, Sequence[Any], bool]],
        *,
        rows: bool = False,
        begin: bool = False,
    ) -> list[tuple[int, list[Row] | None]] | None:
        """:meth:`pipeline` for ``(text, values, marks)``, as :meth:`execute` takes them."""
        pgconn = self._pgconn
        status = pgconn.transaction_status
        if status not in self._in_transaction:
            if not (begin and status == self._idle and self._plain_begin()):
                return None
        else:
            begin = False
        ready = []
        for text, values, marks in items:
            one = self._ready(text, values, marks=marks)
            if one is None:
                return None
            ready.append(one)
        results = []
        pgconn.enter_pipeline_mode()
        try:
            if begin:
                pgconn.send_query_params(b"BEGIN", None)
            for name, dumped, formats in ready:
                pgconn.send_query_prepared(name, dumped, formats)
            pgconn.pipeline_sync()
            self._send()
            for _ in range(len(ready) + begin):
                results.append(self._result())
                self._result()  # the None that ends each statement's results
            sync = self._result()
        except BaseException:
            # A broken connection (the writer then discards it): keep its error,
            # not the one leaving pipeline mode with results uncollected gives.
            with contextlib.suppress(Exception):
                pgconn.exit_pipeline_mode()
            raise
        pgconn.exit_pipeline_mode()
        for result in results:
            self._check(result)  # the first failure; the rest were skipped
        if sync is None or sync.status != self._sync:
            raise self._operational("a pipeline ended without its synchronisation point")
        return [self._outcome(result, rows=rows) for result in results[1 if begin else 0 :]]

    def _plain_begin(self) -> bool:
        conn = self._conn
        return (
            not conn.autocommit
            and conn.isolation_level is None
            and conn.read_only is None
            and conn.deferrable is None
        )

    def _send(self) -> None:
        """Flush what libpq holds (the connection is non-blocking)."""
        pgconn = self._pgconn
        while pgconn.flush():
            select.select([pgconn.socket], [pgconn.socket], [])

    def _result(self) -> Any:
        """The next result, waiting for it without holding the GIL."""
        pgconn = self._pgconn
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        return pgconn.get_result()

    def _check(self, result: Any) -> None:
        if result.status not in self._ok:
            error = self._error_from(result, encoding=self._tx.encoding)
            if error.sqlstate == _NO_SUCH_STATEMENT:
                self.names.clear()  # deallocated behind our back: prepare afresh
            raise error


_NO_SUCH_STATEMENT = "26000"  # invalid_sql_statement_name
