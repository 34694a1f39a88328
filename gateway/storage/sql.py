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

On PostgreSQL every statement runs on one cursor kept for the connection:
opening and closing a psycopg cursor costs about 15 µs of CPU per statement
(``bench/README.md``), as much as psycopg's own work for a small statement.
psycopg's client-side cursor holds a statement's whole result once
``execute`` returns, so reusing it loses nothing. On SQLite a cursor is a few
hundred nanoseconds and a closed one finishes its statement at once (a half-read
``SELECT`` left open on a shared cursor would keep its read going), so each
call there keeps its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"

# Rows per multi-row INSERT (insert_rows): 64 trail entries bind 576
# parameters, far below SQLite's 32,766 and PostgreSQL's 65,535.
ROWS_PER_INSERT = 64

Params = Mapping[str, Any]
Row = tuple[Any, ...]


class Sql:
    """Statements with ``:name`` parameters on one DB-API connection."""

    def __init__(self, dbapi_connection: Any, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported dialect {dialect!r}")
        self._conn = dbapi_connection
        self.dialect = dialect
        self._texts: dict[str, str] = {}
        self._inserts: dict[tuple[str, tuple[str, ...], int], str] = {}
        self._last_time: tuple[datetime, Any] | None = None
        # PostgreSQL: the one cursor every statement runs on (module docstring).
        self._share_cursor = dialect == "postgresql"
        self._shared: Any = None

    @property
    def connection(self) -> Any:
        """The DB-API connection the statements run on."""
        return self._conn

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

    def run(self, sql: str, params: Params | None = None) -> int:
        """Execute one statement; return the number of rows it changed."""
        cursor = self._cursor()
        try:
            cursor.execute(self._text(sql), params or {})
            return int(cursor.rowcount)
        finally:
            self._done(cursor)

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
        cursor = self._cursor()
        try:
            cursor.execute(self._text(sql), params or {})
            row = cursor.fetchone()
            return tuple(row) if row is not None else None
        finally:
            self._done(cursor)

    def all(self, sql: str, params: Params | None = None) -> list[Row]:
        cursor = self._cursor()
        try:
            cursor.execute(self._text(sql), params or {})
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            self._done(cursor)

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
        total = len(rows)
        if not total:
            return
        cursor = self._cursor()
        try:
            start, size = 0, ROWS_PER_INSERT
            while start < total:
                while size > total - start:
                    size //= 2
                cursor.execute(
                    self._insert_text(table, columns, size),
                    [v for row in rows[start : start + size] for v in row],
                )
                start += size
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

    def time(self, value: datetime) -> Any:
        """A UTC datetime as the ``UtcDateTime`` columns store it."""
        last = self._last_time
        if last is not None and last[0] is value:
            return last[1]  # a batch's units all share one clock reading
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        naive = value.astimezone(UTC).replace(tzinfo=None)
        stored = naive.strftime(_SQLITE_TIME) if self.dialect == "sqlite" else naive
        self._last_time = (value, stored)
        return stored

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
