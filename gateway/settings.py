"""Configuration: the only module that reads the environment.

Variable names are part of the external contract (operators and scripts rely on
them). Secrets are wrapped in :class:`Secret` so that they never print.
Limits (lifetimes, leeways, sizes) are named fields with the reason beside them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# Collector thresholds (generations 0, 1, 2) once a worker has started: see
# gateway/server.py. Python's own are 700, 10, 10.
GC_THRESHOLDS = (20_000, 20, 50)


def _gc_thresholds(raw: str | None) -> tuple[int, int, int]:
    if not (raw or "").strip():
        return GC_THRESHOLDS
    try:
        values = tuple(int(part) for part in (raw or "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or values[0] < 1 or min(values) < 0:
        raise SettingsError(
            "GATEWAY_GC_THRESHOLDS must be three integers, the first positive (e.g. 20000,20,50)"
        )
    return values[0], values[1], values[2]


class SettingsError(Exception):
    """A configuration variable has a value the gateway cannot use."""


@dataclass(frozen=True)
class Secret:
    """A value that must not appear in logs, reprs or tracebacks."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def _flag(raw: str | None) -> bool:
    return (raw or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: Secret
    policies_dir: Path
    issuer: str
    demo: bool
    idp_issuer: str
    idp_client_id: str
    idp_client_secret: Secret
    log_format: str  # "json" | "console"
    log_level: str = "info"

    # Consent tokens live at most 10 minutes (issue 2); 5 is enough for one transfer.
    token_lifetime_seconds: int = 300
    # Authorization codes: single-use and short (OAuth 2.1 / FAPI 2.0 recommend ≤ 60 s).
    code_lifetime_seconds: int = 60
    # A pending authorization request may wait this long for the person.
    authorization_request_lifetime_seconds: int = 600
    # Assertions sent to providers are only needed for the one call.
    provider_assertion_lifetime_seconds: int = 60
    # A person's session on the gateway's pages.
    session_lifetime_seconds: int = 1800
    # How often the background sweep ends consents that reached their expiry.
    expiry_sweep_seconds: float = 30.0
    # Trail: the checkpoint origin line and key name (C2SP tlog-checkpoint).
    trail_origin: str = ""
    # Group commit: at most this many units of work per transaction, and how
    # long an idle writer waits for company before flushing (0: flush at once).
    trail_batch_max: int = 256
    trail_batch_linger_ms: float = 0.0
    # A new checkpoint is signed at most this often, when the tree has grown.
    checkpoint_interval_seconds: float = 1.0
    # How often due revocation notices are (re)tried.
    notice_interval_seconds: float = 1.0
    # The collector's thresholds in a serving worker (gateway/server.py).
    gc_thresholds: tuple[int, int, int] = GC_THRESHOLDS
    # When set, GET /metrics wants "Authorization: Bearer <this>"; when empty it is open.
    metrics_token: Secret = Secret("")

    @property
    def https_only(self) -> bool:
        return self.issuer.startswith("https://")

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        require_idp: bool = True,
        **overrides: object,
    ) -> Settings:
        """Read ``GATEWAY_*`` variables; ``overrides`` win (used by the CLI flags).

        ``require_idp=False`` is for commands that never log anyone in
        (``gateway policy check``): a missing identity provider is then no error.
        """
        env = os.environ if env is None else env
        data_dir = Path(env.get("GATEWAY_DATA_DIR") or "./var")
        database_url = env.get("GATEWAY_DATABASE_URL") or f"sqlite:///{data_dir / 'gateway.db'}"
        issuer = (env.get("GATEWAY_ISSUER") or "http://127.0.0.1:8080").rstrip("/")
        demo = _flag(env.get("GATEWAY_DEMO"))
        if "demo" in overrides:
            demo = bool(overrides.pop("demo"))
        log_format = env.get("GATEWAY_LOG_FORMAT") or ("console" if demo else "json")
        if log_format not in {"json", "console"}:
            raise SettingsError("GATEWAY_LOG_FORMAT must be 'json' or 'console'")
        parts = urlsplit(issuer)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query:
            raise SettingsError("GATEWAY_ISSUER must be an absolute http(s) URL without query")
        if (
            parts.scheme != "https"
            and not demo
            and parts.hostname not in {"127.0.0.1", "localhost"}
        ):
            raise SettingsError("GATEWAY_ISSUER must use https outside demo mode and loopback")

        idp_issuer = (env.get("GATEWAY_IDP_ISSUER") or "").rstrip("/")
        idp_client_id = env.get("GATEWAY_IDP_CLIENT_ID") or ""
        idp_client_secret = env.get("GATEWAY_IDP_CLIENT_SECRET") or ""
        if demo and not idp_issuer:
            # The demo identity provider is mounted inside the gateway (gateway.demo.idp).
            idp_issuer = f"{issuer}/demo-idp"
            idp_client_id = idp_client_id or "gateway-demo"
        if require_idp and not demo and not idp_issuer:
            raise SettingsError(
                "No identity provider: set GATEWAY_IDP_ISSUER, GATEWAY_IDP_CLIENT_ID and "
                "GATEWAY_IDP_CLIENT_SECRET, or GATEWAY_DEMO=1 for the demo identity provider"
            )
        if idp_issuer and not demo and not idp_client_id:
            raise SettingsError("GATEWAY_IDP_CLIENT_ID is required with GATEWAY_IDP_ISSUER")

        log_level = (env.get("GATEWAY_LOG_LEVEL") or "info").lower()
        if log_level not in {"debug", "info", "warning", "error"}:
            raise SettingsError("GATEWAY_LOG_LEVEL must be debug, info, warning or error")
        origin = env.get("GATEWAY_TRAIL_ORIGIN") or f"{parts.netloc}{parts.path}/trail"
        if not origin or any(c.isspace() or c == "+" for c in origin):
            raise SettingsError("GATEWAY_TRAIL_ORIGIN must be non-empty, without spaces or '+'")
        try:
            batch_max = int(env.get("GATEWAY_TRAIL_BATCH_MAX") or 256)
            linger_ms = float(env.get("GATEWAY_TRAIL_BATCH_LINGER_MS") or 0)
            checkpoint_every = float(env.get("GATEWAY_CHECKPOINT_INTERVAL") or 1.0)
        except ValueError:
            raise SettingsError(
                "GATEWAY_TRAIL_BATCH_MAX, GATEWAY_TRAIL_BATCH_LINGER_MS and "
                "GATEWAY_CHECKPOINT_INTERVAL must be numbers"
            ) from None
        if batch_max < 1 or linger_ms < 0 or checkpoint_every <= 0:
            raise SettingsError("trail batch and checkpoint settings must be positive")
        values: dict[str, object] = {
            "gc_thresholds": _gc_thresholds(env.get("GATEWAY_GC_THRESHOLDS")),
            "metrics_token": Secret((env.get("GATEWAY_METRICS_TOKEN") or "").strip()),
            "trail_origin": origin,
            "trail_batch_max": batch_max,
            "trail_batch_linger_ms": linger_ms,
            "checkpoint_interval_seconds": checkpoint_every,
            "log_level": log_level,
            "data_dir": data_dir,
            "database_url": Secret(database_url),
            "policies_dir": Path(env.get("GATEWAY_POLICIES") or "./policies"),
            "issuer": issuer,
            "demo": demo,
            "idp_issuer": idp_issuer,
            "idp_client_id": idp_client_id,
            "idp_client_secret": Secret(idp_client_secret),
            "log_format": log_format,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
