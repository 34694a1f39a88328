"""Configuration: defaults, GATEWAY_* variables, secrets that never print, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Secret, Settings, SettingsError

PRODUCTION = {
    "GATEWAY_ISSUER": "https://gateway.example.gouv.fr",
    "GATEWAY_IDP_ISSUER": "https://idp.example.gouv.fr/",
    "GATEWAY_IDP_CLIENT_ID": "gateway",
    "GATEWAY_IDP_CLIENT_SECRET": "idp-client-secret-value",
}


def test_defaults_in_demo_mode() -> None:
    s = Settings.from_env({"GATEWAY_DEMO": "1"})
    assert s.demo is True
    assert s.data_dir == Path("./var")
    assert s.database_url.value == f"sqlite:///{Path('./var') / 'gateway.db'}"
    assert s.policies_dir == Path("./policies")
    assert s.issuer == "http://127.0.0.1:8080"
    assert s.log_format == "console"  # readable by a person trying the demo
    assert s.log_level == "info"
    assert s.keys_dir == Path("./var/keys")
    assert s.https_only is False
    # Named limits keep their documented values.
    assert s.code_lifetime_seconds <= 60
    assert s.token_lifetime_seconds <= 600


def test_defaults_outside_demo_log_json() -> None:
    s = Settings.from_env(PRODUCTION)
    assert s.demo is False
    assert s.log_format == "json"
    assert s.https_only is True


def test_gateway_variables_are_read(tmp_path: Path) -> None:
    env = {
        **PRODUCTION,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": "postgresql://gw:pw@db.internal:5432/gateway",
        "GATEWAY_POLICIES": str(tmp_path / "pol"),
        "GATEWAY_ISSUER": "https://gateway.example.gouv.fr/",
        "GATEWAY_LOG_FORMAT": "console",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    s = Settings.from_env(env)
    assert s.data_dir == tmp_path / "data"
    assert s.keys_dir == tmp_path / "data" / "keys"
    assert s.database_url.value == "postgresql://gw:pw@db.internal:5432/gateway"
    assert s.policies_dir == tmp_path / "pol"
    assert s.issuer == "https://gateway.example.gouv.fr"  # trailing slash dropped
    assert s.idp_issuer == "https://idp.example.gouv.fr"
    assert s.idp_client_id == "gateway"
    assert s.idp_client_secret.value == "idp-client-secret-value"
    assert s.log_format == "console"
    assert s.log_level == "warning"


def test_database_url_follows_data_dir(tmp_path: Path) -> None:
    s = Settings.from_env({"GATEWAY_DEMO": "1", "GATEWAY_DATA_DIR": str(tmp_path)})
    assert s.database_url.value == f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on "])
def test_demo_flag_spellings(raw: str) -> None:
    assert Settings.from_env({"GATEWAY_DEMO": raw}).demo is True


@pytest.mark.parametrize("raw", ["0", "false", "", "no"])
def test_demo_flag_off(raw: str) -> None:
    assert Settings.from_env({**PRODUCTION, "GATEWAY_DEMO": raw}).demo is False


def test_secrets_never_in_repr_or_str() -> None:
    env = {**PRODUCTION, "GATEWAY_DATABASE_URL": "postgresql://gw:db-password-value@db/gw"}
    s = Settings.from_env(env)
    for text in (repr(s), str(s), repr(s.database_url), str(s.database_url), f"{s}"):
        assert "db-password-value" not in text
        assert "idp-client-secret-value" not in text
    assert "**" in repr(s.idp_client_secret)
    assert repr(Secret("x")) == str(Secret("x")) == "Secret('**********')"


@pytest.mark.parametrize("fmt", ["xml", "JSON ", "text"])
def test_bad_log_format_is_refused(fmt: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_LOG_FORMAT"):
        Settings.from_env({**PRODUCTION, "GATEWAY_LOG_FORMAT": fmt})


def test_bad_log_level_is_refused() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_LOG_LEVEL"):
        Settings.from_env({**PRODUCTION, "GATEWAY_LOG_LEVEL": "verbose"})


def test_http_issuer_outside_demo_is_refused() -> None:
    with pytest.raises(SettingsError, match="https"):
        Settings.from_env({**PRODUCTION, "GATEWAY_ISSUER": "http://gateway.example.gouv.fr"})


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:8080", "http://localhost:9000"])
def test_http_issuer_on_loopback_is_allowed_outside_demo(issuer: str) -> None:
    s = Settings.from_env({**PRODUCTION, "GATEWAY_ISSUER": issuer})
    assert s.issuer == issuer
    assert s.https_only is False


def test_http_issuer_allowed_in_demo() -> None:
    s = Settings.from_env({"GATEWAY_DEMO": "1", "GATEWAY_ISSUER": "http://gateway.test:8080"})
    assert s.issuer == "http://gateway.test:8080"


@pytest.mark.parametrize(
    "issuer", ["ftp://gateway.example", "gateway.example", "https://gw.example/?x=1"]
)
def test_issuer_must_be_absolute_http_url_without_query(issuer: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_ISSUER"):
        Settings.from_env({**PRODUCTION, "GATEWAY_ISSUER": issuer})


def test_no_identity_provider_outside_demo_names_the_variables() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"GATEWAY_ISSUER": "https://gateway.example.gouv.fr"})
    message = str(caught.value)
    for name in (
        "GATEWAY_IDP_ISSUER",
        "GATEWAY_IDP_CLIENT_ID",
        "GATEWAY_IDP_CLIENT_SECRET",
        "GATEWAY_DEMO",
    ):
        assert name in message


def test_identity_provider_without_client_id_is_refused() -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != "GATEWAY_IDP_CLIENT_ID"}
    with pytest.raises(SettingsError, match="GATEWAY_IDP_CLIENT_ID"):
        Settings.from_env(env)


def test_identity_provider_may_be_skipped_by_commands_that_log_nobody_in() -> None:
    s = Settings.from_env({"GATEWAY_ISSUER": "https://gw.example"}, require_idp=False)
    assert s.idp_issuer == ""
    assert s.demo is False


def test_demo_defaults_the_identity_provider_to_the_mounted_one() -> None:
    s = Settings.from_env({"GATEWAY_DEMO": "1", "GATEWAY_ISSUER": "http://127.0.0.1:9999/"})
    assert s.idp_issuer == "http://127.0.0.1:9999/demo-idp"
    assert s.idp_client_id == "gateway-demo"


def test_demo_keeps_an_explicit_identity_provider() -> None:
    s = Settings.from_env({**PRODUCTION, "GATEWAY_DEMO": "1"})
    assert s.idp_issuer == "https://idp.example.gouv.fr"
    assert s.idp_client_id == "gateway"


def test_overrides_win_over_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env({**PRODUCTION, "GATEWAY_DEMO": "0"}, demo=True, data_dir=tmp_path)
    assert s.demo is True
    assert s.data_dir == tmp_path
    assert s.log_format == "console"  # follows the overridden demo flag


def test_environment_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DEMO", "1")
    monkeypatch.setenv("GATEWAY_ISSUER", "http://127.0.0.1:7000")
    monkeypatch.delenv("GATEWAY_IDP_ISSUER", raising=False)
    monkeypatch.delenv("GATEWAY_LOG_FORMAT", raising=False)
    s = Settings.from_env()
    assert s.demo is True
    assert s.issuer == "http://127.0.0.1:7000"
    assert s.idp_issuer == "http://127.0.0.1:7000/demo-idp"


def test_settings_are_frozen() -> None:
    s = Settings.from_env({"GATEWAY_DEMO": "1"})
    with pytest.raises(AttributeError):
        s.issuer = "https://elsewhere.example"  # type: ignore[misc]
