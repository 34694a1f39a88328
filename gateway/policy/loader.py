"""Load and strictly validate the policy files into a :class:`PolicySet`.

Layout::

    <directory>/purposes.toml             one table per purpose
    <directory>/providers/<id>.toml       one data provider and its resources
    <directory>/clients/<id>.toml         one service provider or auditor

Policy files are reviewed like code, so anything surprising is an error rather
than a default: unknown keys, missing keys, wrong types, dangling references,
unsafe URLs. Every error names the file and the key path, e.g.
``policies/providers/dgfip.toml: resources.revenu_fiscal.fields[2].pointer: must start with "/"``.
(``tomllib`` keeps no positions, so only TOML syntax errors carry a line number.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, NoReturn, cast
from urllib.parse import urlsplit

import jwt
import rfc8785

from gateway.minimise import pointer_tokens
from gateway.policy.model import (
    ACR_LEVELS,
    IDENTITY_CLAIMS,
    Client,
    Field,
    Grant,
    Label,
    PolicySet,
    Provider,
    Purpose,
    Resource,
    Role,
)

__all__ = ["PolicyError", "describe", "load_policies"]

ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
# Query parameter names are the provider's vocabulary, so a little wider than ids.
QUERY_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# RFC 3986 path characters minus "%", "?" and "#": no encoded traversal, no query, no fragment.
PATH_PATTERN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ROLES: tuple[Role, ...] = ("service_provider", "auditor")
METHODS = ("GET",)  # the relay sends no body, so only safe reads can be declared

# Provider limits: defaults when a file says nothing, and bounds that catch typos.
DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
MAX_RESPONSE_BYTES_LIMIT = 16 * 1024 * 1024

# JWK members that only private or symmetric keys have (RFC 7518 §6): a policy
# file is public and reviewed, it must never carry them.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
JWK_TYPES = frozenset({"EC", "OKP", "RSA"})


class PolicyError(Exception):
    """A policy file is invalid; ``str()`` is ``<file>: <key>: <message>``."""

    def __init__(self, file: str | Path, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {message}")


# --- typed access to TOML tables --------------------------------------------------------


class _Table:
    """One TOML table, read with its file and key path for error messages.

    Unknown keys are refused as soon as the table is opened, unless ``open_keys``
    says the keys are names chosen by the author (the purposes file).
    """

    def __init__(
        self,
        file: str,
        path: str,
        value: Any,
        *,
        required: AbstractSet[str] = frozenset(),
        optional: AbstractSet[str] = frozenset(),
        open_keys: bool = False,
    ) -> None:
        self.file = file
        self.path = path
        if not isinstance(value, dict):
            self.fail("", "must be a table")
        self.data: dict[str, Any] = value
        for key in sorted(value):
            if not open_keys and key not in required and key not in optional:
                self.fail(key, "unknown key")
        for key in sorted(required):
            if key not in value:
                self.fail(key, "missing required key")

    def key(self, key: str) -> str:
        if not key:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise PolicyError(self.file, self.key(key), message)

    def sub(
        self, key: str, *, required: AbstractSet[str], optional: AbstractSet[str] = frozenset()
    ) -> _Table:
        return _Table(
            self.file, self.key(key), self.data[key], required=required, optional=optional
        )

    def mapping(self, key: str) -> dict[str, Any]:
        """A table whose keys are names chosen by the author (resources, query parameters)."""
        value = self.data[key]
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
        return cast(dict[str, Any], value)

    def string(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "must be a non-empty string")
        return value

    def integer(self, key: str, *, minimum: int, maximum: int | None = None) -> int:
        value = self.data[key]
        # bool is an int in Python, but `true` is not a count.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, "must be an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(key, f"must be {bound}")
        return value

    def number(self, key: str, *, maximum: float) -> float:
        value = self.data[key]
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(key, "must be a number")
        if not 0 < value <= maximum:
            self.fail(key, f"must be > 0 and <= {maximum}")
        return float(value)

    def strings(self, key: str, *, non_empty: bool = False) -> list[str]:
        value = self.data[key]
        if not isinstance(value, list):
            self.fail(key, "must be an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.fail(f"{key}[{i}]", "must be a non-empty string")
        if non_empty and not value:
            self.fail(key, "must not be empty")
        seen: set[str] = set()
        for i, item in enumerate(value):
            if item in seen:
                self.fail(f"{key}[{i}]", f"duplicate value {item!r}")
            seen.add(item)
        return cast(list[str], value)

    def label(self, key: str) -> Label:
        table = self.sub(key, required={"fr", "en"})
        return Label(fr=table.string("fr"), en=table.string("en"))


def _check_id(table: _Table, key: str, value: str, what: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        table.fail(key, f"{what} {value!r} must match [a-z0-9][a-z0-9_-]*")
    return value


def _check_url(table: _Table, key: str, url: str, *, allow_http: bool, base: bool) -> str:
    """Absolute https URL; http only for loopback and only when ``allow_http``."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        table.fail(key, "is not a valid URL")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        table.fail(key, "must be an absolute https URL")
    if parts.scheme == "http":
        if not allow_http:
            table.fail(key, "must use https (http is only allowed in demo mode)")
        if parts.hostname not in LOOPBACK_HOSTS:
            table.fail(key, "http is only allowed for 127.0.0.1, localhost or [::1]")
    if parts.username is not None or parts.password is not None:
        table.fail(key, "must not contain credentials")
    # RFC 6749 §3.1.2: a redirection endpoint URI MUST NOT include a fragment.
    if parts.fragment or "#" in url:
        table.fail(key, "must not contain a fragment")
    if base and (parts.query or "?" in url):
        table.fail(key, "must not contain a query")
    if any(c.isspace() for c in url):
        table.fail(key, "must not contain whitespace")
    return url


# --- files ------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:  # the message carries line and column
        raise PolicyError(path, "", f"invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "", "must be UTF-8") from exc
    except OSError as exc:
        raise PolicyError(path, "", f"cannot be read: {exc.strerror}") from exc


def _files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(id, path) of every ``*.toml`` in ``directory``, sorted; other files are errors."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise PolicyError(directory, "", "must be a directory")
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue  # .gitkeep and editor files
        if path.suffix != ".toml" or not path.is_file():
            raise PolicyError(path, "", "unexpected file: policy files end in .toml")
        if not ID_PATTERN.fullmatch(path.stem):
            raise PolicyError(path, "", "file name must match [a-z0-9][a-z0-9_-]*.toml")
        yield path.stem, path


def _load_purposes(path: Path) -> dict[str, Purpose]:
    root = _Table(str(path), "", _read_toml(path), open_keys=True)
    purposes: dict[str, Purpose] = {}
    for purpose_id, value in root.data.items():
        _check_id(root, purpose_id, purpose_id, "purpose id")
        t = _Table(
            root.file,
            purpose_id,
            value,
            required={
                "label",
                "description",
                "legal_basis",
                "dpv",
                "max_transfers",
                "max_validity_minutes",
                "retention_days",
            },
        )
        purposes[purpose_id] = Purpose(
            id=purpose_id,
            label=t.label("label"),
            description=t.label("description"),
            legal_basis=_check_iri(t, "legal_basis"),
            dpv=_check_iri(t, "dpv"),
            max_transfers=t.integer("max_transfers", minimum=1),
            max_validity_seconds=t.integer("max_validity_minutes", minimum=1) * 60,
            retention_days=t.integer("retention_days", minimum=0),
        )
    return purposes


def _check_iri(table: _Table, key: str) -> str:
    value = table.string(key)
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        table.fail(key, "must be an absolute https IRI (e.g. https://w3id.org/dpv#Consent)")
    return value


def _load_provider(provider_id: str, path: Path, *, allow_http: bool) -> Provider:
    t = _Table(
        str(path),
        "",
        _read_toml(path),
        required={"name", "base_url", "identity_claims", "min_acr", "resources"},
        optional={"timeout_seconds", "max_response_bytes"},
    )
    claims = t.strings("identity_claims")
    for i, claim in enumerate(claims):
        if claim not in IDENTITY_CLAIMS:
            t.fail(
                f"identity_claims[{i}]",
                f"unknown claim {claim!r}; one of {', '.join(IDENTITY_CLAIMS)}",
            )
    min_acr = t.string("min_acr")
    if min_acr not in ACR_LEVELS:
        t.fail("min_acr", f"must be one of {', '.join(ACR_LEVELS)}")

    resources: dict[str, Resource] = {}
    for resource_id, value in t.mapping("resources").items():
        _check_id(t, f"resources.{resource_id}", resource_id, "resource id")
        resources[resource_id] = _load_resource(
            _Table(
                t.file,
                t.key(f"resources.{resource_id}"),
                value,
                required={"label", "method", "path", "fields"},
                optional={"query"},
            ),
            provider_id,
            resource_id,
        )
    if not resources:
        t.fail("resources", "a provider needs at least one resource")

    return Provider(
        id=provider_id,
        name=t.string("name"),
        # Stored without a trailing "/" because the relay appends the resource path.
        base_url=_check_url(
            t, "base_url", t.string("base_url"), allow_http=allow_http, base=True
        ).rstrip("/"),
        identity_claims=tuple(claims),
        min_acr=min_acr,
        timeout_seconds=(
            t.number("timeout_seconds", maximum=MAX_TIMEOUT_SECONDS)
            if "timeout_seconds" in t.data
            else DEFAULT_TIMEOUT_SECONDS
        ),
        max_response_bytes=(
            t.integer("max_response_bytes", minimum=1, maximum=MAX_RESPONSE_BYTES_LIMIT)
            if "max_response_bytes" in t.data
            else DEFAULT_MAX_RESPONSE_BYTES
        ),
        resources=resources,
    )


def _load_resource(t: _Table, provider_id: str, resource_id: str) -> Resource:
    method = t.string("method")
    if method not in METHODS:
        t.fail("method", f"must be one of {', '.join(METHODS)}")
    path = t.string("path")
    if not path.startswith("/"):
        t.fail("path", 'must start with "/"')
    if "?" in path:
        t.fail("path", 'must not contain "?": declare query parameters under "query"')
    if ".." in path:
        t.fail("path", 'must not contain ".."')
    if "//" in path:
        t.fail("path", 'must not contain "//"')
    if not PATH_PATTERN.fullmatch(path):
        t.fail("path", "may only contain unreserved characters, sub-delims, ':', '@' and '/'")

    query: dict[str, re.Pattern[str]] = {}
    if "query" in t.data:
        for name, pattern in t.mapping("query").items():
            where = f"query.{name}"
            if not QUERY_NAME_PATTERN.fullmatch(name):
                t.fail(where, "query parameter names must match [A-Za-z0-9_.-]+")
            if not isinstance(pattern, str) or not pattern:
                t.fail(where, "must be a non-empty regular expression string")
            try:
                query[name] = re.compile(pattern)
            except re.error as exc:
                t.fail(where, f"invalid regular expression: {exc}")

    raw_fields = t.data["fields"]
    if not isinstance(raw_fields, list) or not raw_fields:
        t.fail("fields", "must be a non-empty array of tables")
    released: list[Field] = []
    for i, value in enumerate(raw_fields):
        f = _Table(t.file, t.key(f"fields[{i}]"), value, required={"pointer", "fr", "en"})
        pointer = f.data["pointer"]
        if not isinstance(pointer, str):
            f.fail("pointer", "must be a string")
        try:
            pointer_tokens(pointer)
        except ValueError as exc:
            f.fail("pointer", str(exc))
        if any(pointer == r.pointer for r in released):
            f.fail("pointer", f"duplicate pointer {pointer!r}")
        released.append(Field(pointer=pointer, label=Label(fr=f.string("fr"), en=f.string("en"))))

    return Resource(
        id=resource_id,
        provider=provider_id,
        label=t.label("label"),
        method=method,
        path=path,
        query=query,
        fields=tuple(released),
    )


def _load_client(
    client_id: str,
    path: Path,
    *,
    allow_http: bool,
    providers: Mapping[str, Provider],
    purposes: Mapping[str, Purpose],
) -> Client:
    t = _Table(
        str(path),
        "",
        _read_toml(path),
        required={"name", "role"},
        optional={"redirect_uris", "jwks", "jwks_uri", "grants", "notification_endpoint"},
    )
    role = t.string("role")
    if role not in ROLES:
        t.fail("role", f"must be one of {', '.join(ROLES)}")

    redirect_uris = t.strings("redirect_uris") if "redirect_uris" in t.data else []
    for i, uri in enumerate(redirect_uris):
        _check_url(t, f"redirect_uris[{i}]", uri, allow_http=allow_http, base=False)

    # Exactly one key source: two would leave it unclear which one authenticates.
    if ("jwks" in t.data) == ("jwks_uri" in t.data):
        t.fail("jwks", 'exactly one of "jwks" and "jwks_uri" is required')
    jwks_uri = None
    jwks = None
    if "jwks_uri" in t.data:
        jwks_uri = _check_url(
            t, "jwks_uri", t.string("jwks_uri"), allow_http=allow_http, base=False
        )
    else:
        jwks = _load_jwks(t.sub("jwks", required={"keys"}))

    notification_endpoint = None
    if "notification_endpoint" in t.data:
        # RFC 8935 push delivery of revocation notices (Security Event Tokens).
        notification_endpoint = _check_url(
            t,
            "notification_endpoint",
            t.string("notification_endpoint"),
            allow_http=allow_http,
            base=False,
        )

    grants: list[Grant] = []
    raw_grants = t.data.get("grants", [])
    if not isinstance(raw_grants, list):
        t.fail("grants", "must be an array of tables")
    for i, value in enumerate(raw_grants):
        g = _Table(t.file, f"grants[{i}]", value, required={"purpose", "provider", "resources"})
        purpose = g.string("purpose")
        if purpose not in purposes:
            g.fail("purpose", f"unknown purpose {purpose!r}")
        provider_id = g.string("provider")
        provider = providers.get(provider_id)
        if provider is None:
            g.fail("provider", f"unknown provider {provider_id!r}")
        if any(x.purpose == purpose and x.provider == provider_id for x in grants):
            # One grant per (purpose, provider) keeps one place to read what is allowed.
            g.fail("", f"a grant for {purpose!r} from {provider_id!r} is already declared")
        resources = g.strings("resources", non_empty=True)
        for j, resource in enumerate(resources):
            if resource not in provider.resources:
                g.fail(f"resources[{j}]", f"unknown resource {provider_id}/{resource}")
        grants.append(Grant(purpose=purpose, provider=provider_id, resources=frozenset(resources)))

    if role == "auditor":
        if grants:
            t.fail("grants", "an auditor receives no personal data: remove its grants")
        if redirect_uris:
            t.fail("redirect_uris", "an auditor does not use the authorization endpoint")
        if notification_endpoint:
            t.fail("notification_endpoint", "an auditor holds no consents to be notified about")
    elif not redirect_uris:
        t.fail("redirect_uris", "a service provider needs at least one redirect URI")

    return Client(
        id=client_id,
        name=t.string("name"),
        role=role,
        redirect_uris=tuple(redirect_uris),
        jwks=jwks,
        jwks_uri=jwks_uri,
        grants=tuple(grants),
        notification_endpoint=notification_endpoint,
    )


def _load_jwks(t: _Table) -> dict[str, Any]:
    keys = t.data["keys"]
    if not isinstance(keys, list) or not keys:
        t.fail("keys", "must be a non-empty array of JWKs")
    kids: set[str] = set()
    for i, key in enumerate(keys):
        where = f"keys[{i}]"
        if not isinstance(key, dict):
            t.fail(where, "must be a table (a JWK)")
        private = PRIVATE_JWK_MEMBERS & set(key)
        if private:
            t.fail(where, f"must be a public key; remove {', '.join(sorted(private))}")
        if key.get("kty") not in JWK_TYPES:
            t.fail(f"{where}.kty", f"must be one of {', '.join(sorted(JWK_TYPES))}")
        kid = key.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or not kid:
                t.fail(f"{where}.kid", "must be a non-empty string")
            if kid in kids:
                t.fail(f"{where}.kid", f"duplicate kid {kid!r}")
            kids.add(kid)
        try:
            jwt.PyJWK(key)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            t.fail(where, f"not a usable public key: {exc}")
    return {"keys": keys}


# --- digest -----------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """Plain JSON data for the digest: dataclasses as objects, patterns as their source."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, frozenset | set):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def policy_digest(
    providers: Mapping[str, Provider],
    purposes: Mapping[str, Purpose],
    clients: Mapping[str, Client],
) -> str:
    """``sha256:<hex>`` over the RFC 8785 (JCS) form of the parsed set.

    Computed from the parsed values, not the file bytes: comments and layout do
    not change it, any change in meaning does.
    """
    canonical = _canonical(
        {"providers": dict(providers), "purposes": dict(purposes), "clients": dict(clients)}
    )
    return "sha256:" + hashlib.sha256(rfc8785.dumps(canonical)).hexdigest()


# --- entry points -----------------------------------------------------------------------


def load_policies(directory: Path, *, allow_http: bool) -> PolicySet:
    """Read and validate every policy file under ``directory``; raise :class:`PolicyError`."""
    if not directory.is_dir():
        raise PolicyError(directory, "", "policy directory not found")
    purposes = _load_purposes(directory / "purposes.toml")
    providers = {
        provider_id: _load_provider(provider_id, path, allow_http=allow_http)
        for provider_id, path in _files(directory / "providers")
    }
    clients = {
        client_id: _load_client(
            client_id, path, allow_http=allow_http, providers=providers, purposes=purposes
        )
        for client_id, path in _files(directory / "clients")
    }
    return PolicySet(
        providers=providers,
        purposes=purposes,
        clients=clients,
        digest=policy_digest(providers, purposes, clients),
    )


_TEXT = {
    "en": {
        "policy": "Policy set {digest}: {n} client(s)",
        "keys": "keys: {keys}",
        "inline": "inline JWKS ({n} key(s))",
        "redirect": "redirect URIs: {uris}",
        "no_grants": "receives no personal data",
        "purpose": 'for the purpose "{label}" ({id})',
        "legal_basis": "legal basis: {iri}; DPV purpose: {dpv}",
        "limits": "at most {n} transfer(s) per consent, consent valid up to {m} min, "
        "data kept by the service provider {d} day(s)",
        "provider": "from {name} ({id}, minimum assurance {acr}):",
    },
    "fr": {
        "policy": "Jeu de politiques {digest} : {n} client(s)",
        "keys": "clés : {keys}",
        "inline": "JWKS en ligne ({n} clé(s))",
        "redirect": "URI de redirection : {uris}",
        "no_grants": "ne reçoit aucune donnée personnelle",
        "purpose": "pour la finalité « {label} » ({id})",
        "legal_basis": "base légale : {iri} ; finalité DPV : {dpv}",
        "limits": "au plus {n} transfert(s) par consentement, consentement valable {m} min "
        "au plus, données conservées {d} jour(s) par le fournisseur de service",
        "provider": "auprès de {name} ({id}, niveau de garantie minimal {acr}) :",
    },
}


def describe(policy: PolicySet, lang: str = "en") -> str:
    """Who may receive what, from whom, for which purpose: the report of ``policy check``."""
    lang = "fr" if lang == "fr" else "en"
    text = _TEXT[lang]
    lines = [text["policy"].format(digest=policy.digest, n=len(policy.clients)), ""]
    for client in sorted(policy.clients.values(), key=lambda c: c.id):
        lines.append(f"{client.id}: {client.name} [{client.role}]")
        keys = client.jwks_uri or text["inline"].format(n=len((client.jwks or {})["keys"]))
        lines.append("  " + text["keys"].format(keys=keys))
        if client.redirect_uris:
            lines.append("  " + text["redirect"].format(uris=", ".join(client.redirect_uris)))
        if not client.grants:
            lines.append("  " + text["no_grants"])
        # One block per purpose, in the order the file first names it.
        for purpose_id in dict.fromkeys(g.purpose for g in client.grants):
            purpose = policy.purposes[purpose_id]
            lines.append(
                "  " + text["purpose"].format(label=purpose.label.in_(lang), id=purpose.id)
            )
            lines.append(
                "    " + text["legal_basis"].format(iri=purpose.legal_basis, dpv=purpose.dpv)
            )
            limits = text["limits"].format(
                n=purpose.max_transfers,
                m=purpose.max_validity_seconds // 60,
                d=purpose.retention_days,
            )
            lines.append(f"    {limits}")
            for grant in client.grants:
                if grant.purpose != purpose_id:
                    continue
                provider = policy.providers[grant.provider]
                lines.append(
                    "    "
                    + text["provider"].format(
                        name=provider.name, id=provider.id, acr=provider.min_acr
                    )
                )
                # The provider's declaration order, so the report does not depend on set order.
                for resource in provider.resources.values():
                    if resource.id in grant.resources:
                        lines.append(f"      - {resource.label.in_(lang)} ({resource.id})")
                        lines.extend(
                            f"          {f.pointer}  {f.label.in_(lang)}" for f in resource.fields
                        )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
