"""Migrations from empty, on SQLite and PostgreSQL, agree with the models' metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.engine import create_engine
from gateway.storage.migrate import (
    SchemaBehind,
    alembic_config,
    check_schema,
    current_revision,
    head_revision,
    upgrade,
)
from gateway.storage.models import metadata
from tests.conftest import PG_URL

MODEL_TABLES = {t.name for t in metadata.sorted_tables}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not PG_URL,
                    reason="PostgreSQL run needs GATEWAY_TEST_DATABASE_URL "
                    "(e.g. postgresql://postgres@127.0.0.1:5432/test)",
                ),
            ],
        ),
    ]
)
async def empty_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on a database with nothing in it (a fresh file, or a recreated schema)."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    else:
        assert PG_URL
        engine = create_engine(PG_URL)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    try:
        yield engine
    finally:
        if engine.dialect.name == "postgresql":
            # Later tests on this database expect the schema at head.
            await upgrade(engine)
        await engine.dispose()


def _snapshot(conn: Connection) -> dict[str, Any]:
    """Tables, columns (name, nullability, type) and index names, as the database reports them."""
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [
                (c["name"], c["nullable"], str(c["type"])) for c in insp.get_columns(table)
            ],
            "pk": sorted(insp.get_pk_constraint(table)["constrained_columns"]),
            "indexes": sorted(i["name"] or "" for i in insp.get_indexes(table)),
        }
    return out


def _diff(conn: Connection, target: MetaData) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, target))


async def test_empty_database_has_no_revision(empty_engine: AsyncEngine) -> None:
    assert await current_revision(empty_engine) is None


async def test_check_schema_on_empty_database_says_to_upgrade(empty_engine: AsyncEngine) -> None:
    with pytest.raises(SchemaBehind) as caught:
        await check_schema(empty_engine)
    assert "`gateway db upgrade`" in str(caught.value)
    assert "empty database" in str(caught.value)
    assert head_revision() in str(caught.value)


async def test_upgrade_from_empty_builds_every_model_table(empty_engine: AsyncEngine) -> None:
    await upgrade(empty_engine)
    assert await current_revision(empty_engine) == head_revision()
    await check_schema(empty_engine)

    async with empty_engine.connect() as conn:
        found = await conn.run_sync(_snapshot)
    assert set(found) == MODEL_TABLES | {"alembic_version"}
    for table in metadata.sorted_tables:
        columns = [name for name, _nullable, _type in found[table.name]["columns"]]
        assert sorted(columns) == sorted(c.name for c in table.columns), table.name
        nullable = {name: n for name, n, _type in found[table.name]["columns"]}
        for column in table.columns:
            assert nullable[column.name] == column.nullable, f"{table.name}.{column.name}"
        assert found[table.name]["pk"] == sorted(c.name for c in table.primary_key), table.name
        for index in table.indexes:
            assert index.name in found[table.name]["indexes"], index.name


async def test_second_upgrade_is_a_no_op(empty_engine: AsyncEngine) -> None:
    await upgrade(empty_engine)
    async with empty_engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO used_jtis (key, expires_at) VALUES ('jti-1', '2030-01-01 00:00:00')")
        )
        before = await conn.run_sync(_snapshot)

    await upgrade(empty_engine)

    async with empty_engine.connect() as conn:
        assert await conn.run_sync(_snapshot) == before
        rows = (await conn.execute(text("SELECT key FROM used_jtis"))).scalars().all()
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert rows == ["jti-1"]
    assert [v[0] for v in versions] == [head_revision()]


async def test_models_and_migrations_agree(empty_engine: AsyncEngine) -> None:
    await upgrade(empty_engine)
    async with empty_engine.connect() as conn:
        assert await conn.run_sync(_diff, metadata) == []


async def test_agreement_check_sees_a_difference_either_way(empty_engine: AsyncEngine) -> None:
    """The comparison above can fail: a column or a table missing on either side shows."""
    await upgrade(empty_engine)

    extra_column = MetaData()
    for table in metadata.sorted_tables:
        copy = table.to_metadata(extra_column)
        if table.name == "consents":
            copy.append_column(Column("only_in_models", Integer, nullable=True))

    missing_table = MetaData()
    for table in metadata.sorted_tables:
        if table.name != "used_jtis":
            table.to_metadata(missing_table)

    async with empty_engine.connect() as conn:
        added = await conn.run_sync(_diff, extra_column)
        removed = await conn.run_sync(_diff, missing_table)
    assert [(d[0], d[2], d[3].name) for d in added] == [
        ("add_column", "consents", "only_in_models")
    ]
    assert [(d[0], d[1].name) for d in removed if d[0] == "remove_table"] == [
        ("remove_table", "used_jtis")
    ]


async def test_check_schema_refuses_an_older_revision(empty_engine: AsyncEngine) -> None:
    def to_first(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")

    async with empty_engine.begin() as conn:
        await conn.run_sync(to_first)
    assert await current_revision(empty_engine) == "0001"
    if head_revision() == "0001":
        await check_schema(empty_engine)
        return
    with pytest.raises(SchemaBehind, match=r"database schema is at 0001.*gateway db upgrade"):
        await check_schema(empty_engine)
    # And the upgrade from there reaches head.
    await upgrade(empty_engine)
    await check_schema(empty_engine)
