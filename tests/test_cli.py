"""The ``gateway`` command, run as the installed console script in a clean environment."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from gateway.jose import SigningKey
from gateway.storage.engine import create_engine
from gateway.storage.migrate import check_schema, current_revision, head_revision
from gateway.storage.models import metadata
from tests.conftest import REPO

SCRIPT = Path(sys.executable).with_name("gateway")
POLICIES = REPO / "policies"
# Outside demo mode the gateway needs an identity provider; these make a valid set.
PRODUCTION_IDP = {
    "GATEWAY_IDP_ISSUER": "https://idp.example.gouv.fr",
    "GATEWAY_IDP_CLIENT_ID": "gateway",
    "GATEWAY_IDP_CLIENT_SECRET": "not-a-real-secret",
}


def gateway(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the console script with only the GATEWAY_* variables given here."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    clean.update(env or {})
    return subprocess.run(  # noqa: S603 (our own console script, fixed arguments)
        [str(SCRIPT), *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(autouse=True)
def _script_installed() -> None:
    assert SCRIPT.is_file(), f"console script missing: {SCRIPT} (pip install -e .)"


# --------------------------------------------------------------------------- help


def test_help_lists_the_commands(tmp_path: Path) -> None:
    run = gateway("--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: gateway")
    for command in ("serve", "demo", "db", "keys", "policy"):
        assert re.search(rf"^\s+{command}\s", run.stdout, re.MULTILINE), command
    assert "GATEWAY_" in run.stdout  # points at the configuration


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (["serve"], ["--host", "--port", "--workers"]),
        (["demo"], ["--scripted"]),
        (["db", "upgrade"], ["--help"]),
        (["keys", "generate"], ["--help"]),
        (["policy", "check"], ["directory", "--demo", "--lang"]),
    ],
)
def test_subcommand_help(tmp_path: Path, args: list[str], options: list[str]) -> None:
    run = gateway(*args, "--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: gateway {' '.join(args)}")
    for option in options:
        assert option in run.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    run = gateway(cwd=tmp_path)
    assert run.returncode == 2
    assert "usage: gateway" in run.stderr


# --------------------------------------------------------------------------- db upgrade / serve


async def test_db_upgrade_creates_the_schema_at_head(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run = gateway(
        "db", "upgrade", cwd=tmp_path, env={"GATEWAY_DATA_DIR": str(data), "GATEWAY_DEMO": "1"}
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"database schema at revision {head_revision()}"
    assert (data / "gateway.db").is_file()

    engine = create_engine(f"sqlite:///{data / 'gateway.db'}")
    try:
        assert await current_revision(engine) == head_revision()
        await check_schema(engine)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert {t.name for t in metadata.sorted_tables} <= tables

    # Running it again is harmless.
    again = gateway(
        "db", "upgrade", cwd=tmp_path, env={"GATEWAY_DATA_DIR": str(data), "GATEWAY_DEMO": "1"}
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == run.stdout


@pytest.mark.parametrize("make_dir", [True, False], ids=["empty-data-dir", "no-data-dir"])
def test_serve_refuses_an_empty_database(tmp_path: Path, make_dir: bool) -> None:
    data = tmp_path / "data"
    if make_dir:
        data.mkdir()
    env = {"GATEWAY_DATA_DIR": str(data), "GATEWAY_DEMO": "1"}
    # Should the check let the server start, it would serve until the timeout kills it.
    run = gateway("serve", "--port", "0", cwd=tmp_path, env=env, timeout=30)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "gateway db upgrade" in run.stderr
    assert "empty database" in run.stderr
    assert "Traceback" not in run.stderr
    # Stopped before serving: neither the demo warning nor uvicorn's banner.
    assert "WARNING" not in run.stderr
    assert "Uvicorn running" not in run.stderr + run.stdout
    assert not (data / "keys").exists()


def test_serve_configuration_error_is_reported(tmp_path: Path) -> None:
    run = gateway("serve", cwd=tmp_path, env={"GATEWAY_DATA_DIR": str(tmp_path / "data")})
    assert run.returncode == 1
    assert "configuration error" in run.stderr
    assert "GATEWAY_IDP_ISSUER" in run.stderr


# --------------------------------------------------------------------------- keys


def test_keys_generate_creates_private_files_and_prints_the_kid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"GATEWAY_DATA_DIR": str(data), **PRODUCTION_IDP}
    run = gateway("keys", "generate", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr

    keys = data / "keys"
    [pem] = list((keys / "signing").glob("*.pem"))
    kid = SigningKey.from_pem(pem.read_bytes()).kid
    assert pem.name == f"{kid}.pem"
    assert f"ES256 {kid} (signing)" in run.stdout
    assert str(keys) in run.stdout
    files = [p for p in keys.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {
        pem.name,
        "trail-ed25519.pem",
        "pseudonym.secret",
        "claims.key",
    }
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    secret = (keys / "pseudonym.secret").read_bytes()

    # A second run keeps the keys it finds.
    again = gateway("keys", "generate", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == run.stdout
    assert list((keys / "signing").glob("*.pem")) == [pem]
    assert (keys / "pseudonym.secret").read_bytes() == secret


# --------------------------------------------------------------------------- policy check


def test_policy_check_demo_describes_who_receives_what(tmp_path: Path) -> None:
    run = gateway("policy", "check", str(POLICIES), "--demo", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for text in (
        "Mairie de Démoville (démonstration)",
        "Centre communal d'action sociale d'Exempleville (démonstration)",
        "Auditeur de démonstration",
        "Family quotient",
        "Reference tax income",
        "Household composition",
        "Eligibility for municipal family benefits",
    ):
        assert text in run.stdout, text
    assert re.search(r"^policy digest: sha256:[0-9a-f]{64}$", run.stdout, re.MULTILINE)


def test_policy_check_relative_directory_and_french(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "policies")
    run = gateway("policy", "check", "policies", "--demo", "--lang", "fr", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Quotient familial" in run.stdout
    assert "Revenu fiscal de référence" in run.stdout


def test_policy_check_follows_gateway_demo_and_gateway_policies(tmp_path: Path) -> None:
    env = {"GATEWAY_DEMO": "1", "GATEWAY_POLICIES": str(POLICIES)}
    run = gateway("policy", "check", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "Mairie de Démoville" in run.stdout


def test_policy_check_outside_demo_names_the_first_http_url(tmp_path: Path) -> None:
    # No identity provider configured either: checking files must not need one.
    run = gateway("policy", "check", str(POLICIES), cwd=tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert "configuration error" not in run.stderr
    expected = f"{POLICIES / 'providers' / 'cnaf.toml'}: base_url: must use https"
    assert expected in run.stderr


def test_policy_check_broken_policy_names_file_and_key(tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(POLICIES, broken)
    dgfip = broken / "providers" / "dgfip.toml"
    # Appended after the last table: an unknown key inside the last resource.
    dgfip.write_text(dgfip.read_text() + '\ncolour = "blue"\n')
    run = gateway("policy", "check", str(broken), "--demo", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert re.search(
        rf"^policy error: {re.escape(str(dgfip))}: resources\.\w+\.colour: unknown key$",
        run.stderr,
        re.MULTILINE,
    ), run.stderr


def test_policy_check_missing_directory(tmp_path: Path) -> None:
    run = gateway("policy", "check", str(tmp_path / "nowhere"), "--demo", cwd=tmp_path)
    assert run.returncode == 1
    assert "nowhere" in run.stderr
