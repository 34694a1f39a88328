"""``GET /openapi.json``: the external contract (DESIGN §4) as an OpenAPI 3.1 document.

Written by hand, next to the routes, rather than generated: what an
integrator needs (which header carries the DPoP proof, that errors are
problem+json with a stable ``type``, that the OAuth endpoints take
private_key_jwt) is not in the handlers' signatures. ``tests/test_openapi.py``
keeps it honest: every route of the app is documented with its methods and
nothing else is, and the document validates against the OpenAPI 3.1 schema.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

JSON = "application/json"
PROBLEM = "application/problem+json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _oauth_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("OAuthError")}}}


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _query(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_DPOP_HEADER = {
    "name": "DPoP",
    "in": "header",
    "required": True,
    "description": "A DPoP proof JWT (RFC 9449) for this request: htm, htu (the gateway's "
    "public URL + path, without query), iat, a fresh jti, and ath for a bound token.",
    "schema": {"type": "string"},
}
_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Echoed in the response and recorded with the transfer: cite it when asking "
    "why a request failed (8-64 characters of [A-Za-z0-9._-]).",
    "schema": {"type": "string"},
}
_CLIENT_AUTH = {
    "client_assertion_type": {
        "type": "string",
        "const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    },
    "client_assertion": {
        "type": "string",
        "description": "private_key_jwt (RFC 7523): signed by a key of the client's JWKS, "
        "aud = the issuer, single-use jti.",
    },
    "client_id": {"type": "string"},
}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457. `type` is stable: urn:gateway:error:<code>.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "pattern": "^urn:gateway:error:[a-z_]+$"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "transfer_id": {"type": "string", "description": "on transfers"},
            "provider": {"type": "string", "description": "when a provider failed"},
        },
    },
    "OAuthError": {
        "type": "object",
        "description": "RFC 6749 §5.2.",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    },
    "AuthorizationDetail": {
        "type": "object",
        "description": "RFC 9396, one per data provider.",
        "required": ["type", "provider", "resources", "purpose"],
        "properties": {
            "type": {"type": "string", "const": "personal_data"},
            "provider": {"type": "string", "examples": ["dgfip"]},
            "resources": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "purpose": {"type": "string", "examples": ["family-benefit-eligibility"]},
            "max_transfers": {"type": "integer", "minimum": 1},
        },
    },
    "ConsentToken": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "const": "DPoP"},
            "expires_in": {"type": "integer"},
            "authorization_details": {"type": "array", "items": _ref("AuthorizationDetail")},
            "consent_id": {"type": "string"},
            "scope": {"type": "string", "description": "audit:read, for auditors"},
        },
    },
    "PushedRequest": {
        "type": "object",
        "required": ["request_uri", "expires_in"],
        "properties": {"request_uri": {"type": "string"}, "expires_in": {"type": "integer"}},
    },
    "Hashes": {
        "type": "object",
        "required": ["hashes"],
        "properties": {
            "hashes": {
                "type": "array",
                "items": {"type": "string", "contentEncoding": "base64"},
                "description": "RFC 6962 order, as golang.org/x/mod/sumdb/tlog checks them",
            }
        },
    },
    "TrailEntry": {
        "type": "object",
        "required": ["index", "entry", "leaf_hash"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "entry": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "the exact bytes: gateway-trail/v1\\n + RFC 8785 JSON",
            },
            "leaf_hash": {"type": "string", "contentEncoding": "base64"},
            "event": {"type": "object", "description": "the entry's JSON, decoded"},
        },
    },
    "EventsPage": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {"type": "array", "items": _ref("TrailEntry")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Consent": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "client_id": {"type": "string"},
            "client_name": {"type": "string"},
            "purpose": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["pending", "active", "denied", "revoked", "expired", "exhausted"],
            },
            "authorization_details": {"type": "array", "items": _ref("AuthorizationDetail")},
            "transfers_used": {"type": "integer"},
            "transfers_allowed": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Transfer": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "consent_id": {"type": "string"},
            "client_id": {"type": "string"},
            "provider": {"type": "string"},
            "resource": {"type": "string"},
            "outcome": {"type": "string"},
            "error_code": {"type": ["string", "null"]},
            "at": {"type": "string", "format": "date-time"},
        },
    },
}

_TRANSFER_ERRORS = {
    "400": _problem("a query parameter the resource does not allow, or a malformed request"),
    "401": _problem("no, a forged, an expired or a replayed token or DPoP proof"),
    "403": _problem("the consent does not allow it (revoked, expired, used up, other resource)"),
    "404": _problem("no such provider or resource, or the provider has no record (no_record)"),
    "502": _problem("the provider failed; the consented use is given back"),
    "503": _problem("the trail could not be written: nothing was relayed"),
    "504": _problem("the provider did not answer in time; the use is given back"),
}
_AUDITOR: list[dict[str, list[str]]] = [{"auditorToken": []}]
_SESSION: list[dict[str, list[str]]] = [{"session": []}]


def _paths() -> dict[str, Any]:
    trail_tag, audit_tag, oauth_tag, person_tag, ops_tag = (
        ["trail"],
        ["audit"],
        ["oauth"],
        ["person"],
        ["operations"],
    )
    token_form = {
        "type": "object",
        "required": ["grant_type", "client_assertion_type", "client_assertion"],
        "properties": {
            "grant_type": {"type": "string", "enum": ["authorization_code", "client_credentials"]},
            "code": {"type": "string"},
            "code_verifier": {"type": "string", "description": "PKCE (S256)"},
            "redirect_uri": {"type": "string"},
            "scope": {"type": "string", "description": "audit:read (client_credentials)"},
            **_CLIENT_AUTH,
        },
    }
    authorization_parameters = {
        "response_type": {"type": "string", "const": "code"},
        "redirect_uri": {"type": "string"},
        "state": {"type": "string"},
        "code_challenge": {"type": "string"},
        "code_challenge_method": {"type": "string", "const": "S256"},
        "authorization_details": {
            "type": "string",
            "description": "JSON array of AuthorizationDetail (RFC 9396)",
        },
    }
    return {
        "/data/{provider}/{resource}": {
            "get": {
                "tags": ["transfers"],
                "summary": "One transfer of a person's data, with their live consent",
                "description": "Checks the consent token and its DPoP proof, the consent and "
                "the policy, records transfer.authorized, calls the provider, returns its "
                "answer reduced to the consented fields and records the outcome. Query "
                "parameters: only those the resource declares in policy.",
                "security": [{"consentToken": []}],
                "parameters": [
                    _path("provider", "data provider id (policy)"),
                    _path("resource", "resource id of that provider (policy)"),
                    _DPOP_HEADER,
                    _REQUEST_ID,
                ],
                "responses": {
                    "200": {
                        "description": "the minimised answer",
                        "headers": {
                            "Transfer-Id": {
                                "description": "this transfer's id, as in the trail",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    **_TRANSFER_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "tags": ops_tag,
                "summary": "The process is up",
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "tags": ops_tag,
                "summary": "Ready to serve: database, keys, policies",
                "responses": {
                    "200": _json({"type": "object"}, "ready"),
                    "503": _json({"type": "object"}, "the database does not answer"),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ops_tag,
                "summary": "Prometheus text, summed over the server's workers",
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _problem("GATEWAY_METRICS_TOKEN is set and was not sent"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ops_tag,
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/.well-known/oauth-authorization-server": {
            "get": {
                "tags": oauth_tag,
                "summary": "Authorization server metadata (RFC 8414)",
                "responses": {"200": _json({"type": "object"}, "metadata")},
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "tags": oauth_tag,
                "summary": "Keys that sign consent tokens, provider assertions and receipts",
                "responses": {"200": _json({"type": "object"}, "JWK set (RFC 7517)")},
            }
        },
        "/oauth/par": {
            "post": {
                "tags": oauth_tag,
                "summary": "Pushed authorization request (RFC 9126)",
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": {
                                "type": "object",
                                "properties": {**authorization_parameters, **_CLIENT_AUTH},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("PushedRequest"), "the request_uri for /oauth/authorize"),
                    "400": _oauth_error("invalid request or authorization_details"),
                    "401": _oauth_error("client authentication failed"),
                },
            }
        },
        "/oauth/authorize": {
            "get": {
                "tags": oauth_tag,
                "summary": "The person's consent: login, consent page, redirect back",
                "parameters": [
                    _query("client_id", "the service provider", required=True),
                    _query("request_uri", "from /oauth/par"),
                    *[
                        _query(name, "without PAR: the authorization parameters")
                        for name in authorization_parameters
                    ],
                ],
                "responses": {
                    "303": {"description": "to the login, or back to the redirect_uri"},
                    "400": _page("a request that cannot be redirected back (a readable page)"),
                },
            }
        },
        "/oauth/token": {
            "post": {
                "tags": oauth_tag,
                "summary": "A DPoP-bound consent token (or an auditor's token)",
                "parameters": [_DPOP_HEADER],
                "requestBody": {"required": True, "content": {FORM: {"schema": token_form}}},
                "responses": {
                    "200": _json(_ref("ConsentToken"), "the token"),
                    "400": _oauth_error("invalid grant, code replayed or expired, bad DPoP"),
                    "401": _oauth_error("client authentication failed"),
                },
            }
        },
        "/oauth/revoke": {
            "post": {
                "tags": oauth_tag,
                "summary": "Token revocation by the client (RFC 7009)",
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": {
                                "type": "object",
                                "required": ["token"],
                                "properties": {
                                    "token": {"type": "string"},
                                    "token_type_hint": {"type": "string"},
                                    **_CLIENT_AUTH,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "revoked (or unknown: RFC 7009 §2.2)"},
                    "400": _oauth_error("invalid request"),
                    "401": _oauth_error("client authentication failed"),
                },
            }
        },
        "/consent/{consent_id}": {
            "get": {
                "tags": person_tag,
                "summary": "The consent page: what, from whom, to whom, why, how many times",
                "parameters": [_path("consent_id", "the pending consent")],
                "responses": {"200": _page("the page"), "404": _page("no such request")},
            },
            "post": {
                "tags": person_tag,
                "summary": "The person's decision (decision=grant|deny, csrf_token)",
                "parameters": [_path("consent_id", "the pending consent")],
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": {
                                "type": "object",
                                "required": ["decision", "csrf_token"],
                                "properties": {
                                    "decision": {"type": "string", "enum": ["grant", "deny"]},
                                    "csrf_token": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "303": {"description": "back to the service provider"},
                    "403": _page("CSRF check failed"),
                },
            },
        },
        "/login/callback": {
            "get": {
                "tags": person_tag,
                "summary": "Return from the identity provider (OpenID Connect code flow)",
                "parameters": [_query("code", "from the identity provider"), _query("state", "")],
                "responses": {
                    "303": {"description": "on to the consent page or /me"},
                    "400": _page("login failed"),
                    "502": _page("the identity provider is unavailable"),
                },
            }
        },
        "/logout": {
            "post": {
                "tags": person_tag,
                "summary": "End the person's session",
                "responses": {"303": {"description": "to the home page"}},
            }
        },
        "/me": {
            "get": {
                "tags": person_tag,
                "summary": "My data: consents, every transfer, revoke, receipts",
                "responses": {
                    "200": _page("the dashboard"),
                    "303": {"description": "to the login"},
                },
            }
        },
        "/me/consents/{consent_id}/revoke": {
            "post": {
                "tags": person_tag,
                "summary": "Revoke one of my consents (form, csrf_token)",
                "parameters": [_path("consent_id", "one of the person's consents")],
                "responses": {
                    "303": {"description": "back to /me"},
                    "403": _page("CSRF check failed"),
                },
            }
        },
        "/me/consents/{consent_id}/receipt": {
            "get": {
                "tags": person_tag,
                "summary": "The signed receipt of one of my consents, as a file",
                "parameters": [_path("consent_id", "one of the person's consents")],
                "responses": {
                    "200": {
                        "description": "a JWS",
                        "content": {"application/jwt": {"schema": {"type": "string"}}},
                    },
                    "401": _problem("log in first"),
                    "404": _problem("no such consent"),
                    "409": _problem("this consent was never granted"),
                },
            }
        },
        "/api/me/consents": {
            "get": {
                "tags": person_tag,
                "summary": "My consents (JSON), and the CSRF token for writes",
                "security": _SESSION,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "consents": {"type": "array", "items": _ref("Consent")},
                                "csrf_token": {"type": "string"},
                            },
                        },
                        "the person's consents",
                    ),
                    "401": _problem("log in first"),
                },
            }
        },
        "/api/me/consents/{consent_id}/receipt": {
            "get": {
                "tags": person_tag,
                "summary": "The signed receipt of one of my consents (JSON)",
                "security": _SESSION,
                "parameters": [_path("consent_id", "one of the person's consents")],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"receipt": {"type": "string"}}},
                        "the receipt, a JWS",
                    ),
                    "401": _problem("log in first"),
                    "404": _problem("no such consent"),
                    "409": _problem("this consent was never granted"),
                },
            }
        },
        "/api/me/transfers": {
            "get": {
                "tags": person_tag,
                "summary": "Every transfer of my data (JSON)",
                "security": _SESSION,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "transfers": {"type": "array", "items": _ref("Transfer")}
                            },
                        },
                        "the person's transfers",
                    ),
                    "401": _problem("log in first"),
                },
            }
        },
        "/api/me/consents/{consent_id}/revoke": {
            "post": {
                "tags": person_tag,
                "summary": "Revoke one of my consents (JSON; X-CSRF-Token header)",
                "security": _SESSION,
                "parameters": [
                    _path("consent_id", "one of the person's consents"),
                    {
                        "name": "X-CSRF-Token",
                        "in": "header",
                        "required": True,
                        "description": "csrf_token from GET /api/me/consents",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(_ref("Consent"), "the consent, now revoked"),
                    "401": _problem("log in first"),
                    "403": _problem("CSRF check failed"),
                    "404": _problem("no such consent"),
                },
            }
        },
        "/trail/checkpoint": {
            "get": {
                "tags": trail_tag,
                "summary": "The latest signed checkpoint (C2SP tlog-checkpoint, Ed25519 note)",
                "responses": {
                    "200": {
                        "description": "a signed note",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _problem("no checkpoint yet (never for an empty tree)"),
                },
            }
        },
        "/trail/verifier-key": {
            "get": {
                "tags": trail_tag,
                "summary": "The note verifier key of the checkpoints",
                "responses": {
                    "200": {
                        "description": "name+hash+key",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/trail/proof/inclusion": {
            "get": {
                "tags": trail_tag,
                "summary": "Inclusion proof of entry `index` in the tree of `size`",
                "parameters": [
                    _query("index", "0-based", required=True, type="integer", minimum=0),
                    _query("size", "a tree size", required=True, type="integer", minimum=1),
                ],
                "responses": {
                    "200": _json(_ref("Hashes"), "the proof"),
                    "400": _problem("bad index or size"),
                },
            }
        },
        "/trail/proof/consistency": {
            "get": {
                "tags": trail_tag,
                "summary": "Consistency proof between tree sizes `old` and `new`",
                "parameters": [
                    _query("old", "older size", required=True, type="integer", minimum=1),
                    _query("new", "newer size", required=True, type="integer", minimum=1),
                ],
                "responses": {
                    "200": _json(_ref("Hashes"), "the proof"),
                    "400": _problem("bad sizes"),
                },
            }
        },
        "/trail/entries/{index}": {
            "get": {
                "tags": trail_tag,
                "summary": "One entry: for an auditor, or for the person it is about",
                "security": [*_AUDITOR, *_SESSION],
                "parameters": [_path("index", "0-based entry index")],
                "responses": {
                    "200": _json(_ref("TrailEntry"), "the entry"),
                    "401": _problem("an auditor token, or the person's session, is needed"),
                    "404": _problem("no such entry (or not about this person)"),
                },
            }
        },
        "/audit/events": {
            "get": {
                "tags": audit_tag,
                "summary": "Trail entries by filter (each query is itself recorded)",
                "security": _AUDITOR,
                "parameters": [
                    _DPOP_HEADER,
                    *[
                        _query(name, f"only entries with this {name}")
                        for name in ("type", "client_id", "provider", "consent_id", "transfer_id")
                    ],
                    _query("since", "RFC 3339", format="date-time", type="string"),
                    _query("until", "RFC 3339", format="date-time", type="string"),
                    _query("cursor", "next_cursor of the previous page"),
                    _query("limit", "page size", type="integer", minimum=1),
                ],
                "responses": {
                    "200": _json(_ref("EventsPage"), "one page"),
                    "400": _problem("a bad filter"),
                    "401": _problem("an auditor's DPoP-bound token is needed"),
                },
            }
        },
        "/audit/export": {
            "get": {
                "tags": audit_tag,
                "summary": "Entries as NDJSON, for `gateway trail verify`",
                "security": _AUDITOR,
                "parameters": [
                    _DPOP_HEADER,
                    _query("since", "RFC 3339", format="date-time", type="string"),
                    _query("until", "RFC 3339", format="date-time", type="string"),
                ],
                "responses": {
                    "200": {
                        "description": "one TrailEntry per line",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    "401": _problem("an auditor's DPoP-bound token is needed"),
                },
            }
        },
    }


def document(issuer: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a gateway serving at ``issuer``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway: consent-mediated personal data exchange",
            "version": __version__,
            "description": "Service providers fetch a person's data from data providers "
            "only with that person's consent for each transfer. Errors are RFC 9457 "
            "problem+json with a stable `type` (urn:gateway:error:<code>); the OAuth "
            "endpoints answer RFC 6749 errors. Every transfer is recorded in a "
            "tamper-evident trail (/trail).",
        },
        "servers": [{"url": issuer}],
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "consentToken": {
                    "type": "http",
                    "scheme": "DPoP",
                    "description": "Authorization: DPoP <consent token from /oauth/token>, "
                    "with a DPoP proof header (RFC 9449).",
                },
                "auditorToken": {
                    "type": "http",
                    "scheme": "DPoP",
                    "description": "An auditor's token (client_credentials, scope audit:read), "
                    "with a DPoP proof header.",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "gw_session",
                    "description": "The person's session after logging in with the identity "
                    "provider.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "GATEWAY_METRICS_TOKEN, when it is set.",
                },
            },
        },
    }
