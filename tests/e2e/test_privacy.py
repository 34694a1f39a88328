"""No personal data and no credential in the logs or the trail, over the whole story.

The person's identity does cross the gateway (the identity provider sends it,
the data providers receive it in the gateway's assertion): this test checks
that it really was in flight, and that none of it stayed in a log line or a
trail entry. Credentials (codes, tokens, proofs, assertions) must not reach
the logs either.
"""

from __future__ import annotations

import contextlib
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest

from gateway.demo.personas import PERSONAS
from gateway.demo.story import revoke_on_my_page
from tests.conftest import CNAF, DGFIP, ISSUER, Stack, cnaf_details, dgfip_details

PERSONA = PERSONAS["marianne"]
# Fields whose values are credentials, wherever they travel.
_SECRET_FIELDS = {
    "code",
    "access_token",
    "id_token",
    "refresh_token",
    "client_assertion",
    "code_verifier",
    "client_secret",
}
# Below this length a "secret" could match by chance (e.g. a short state value).
_MIN_SECRET_LENGTH = 16


@dataclass
class Wiretap:
    """Every credential that crossed the transport, by kind."""

    secrets: dict[str, set[str]] = field(default_factory=dict)
    provider_assertions: list[str] = field(default_factory=list)
    id_tokens: list[str] = field(default_factory=list)

    def keep(self, kind: str, value: str | None) -> None:
        if value and len(value) >= _MIN_SECRET_LENGTH:
            self.secrets.setdefault(kind, set()).add(value)

    def all(self) -> Iterator[tuple[str, str]]:
        for kind, values in self.secrets.items():
            for value in values:
                yield kind, value


def tap(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Wiretap:
    """Record credentials on every request and response that crosses the stack's transport."""
    wiretap = Wiretap()
    original = stack.transport.handle_async_request

    async def recording(request: httpx.Request) -> httpx.Response:
        await request.aread()
        dpop = request.headers.get("dpop")
        wiretap.keep("dpop_proof", dpop)
        authorization = request.headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        wiretap.keep(f"authorization_{scheme.lower()}", credential)
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if origin in (CNAF, DGFIP) and scheme.lower() == "bearer":
            wiretap.provider_assertions.append(credential)
        if request.headers.get("content-type", "").startswith("application/x-www-form"):
            for name, value in parse_qsl(request.content.decode()):
                if name in _SECRET_FIELDS:
                    wiretap.keep(name, value)
        for name, value in request.url.params.multi_items():
            if name in _SECRET_FIELDS:
                wiretap.keep(name, value)
        response = await original(request)
        body = await response.aread()
        location = response.headers.get("location")
        if location:
            for name, value in parse_qsl(urlsplit(location).query):
                if name in _SECRET_FIELDS:
                    wiretap.keep(name, value)
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if isinstance(document, dict):
                for name in _SECRET_FIELDS & set(document):
                    if isinstance(document[name], str):
                        wiretap.keep(name, document[name])
                if isinstance(document.get("id_token"), str):
                    wiretap.id_tokens.append(document["id_token"])
        # A fresh, unread stream: the relay reads provider answers raw, chunk by chunk.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            request=request,
        )

    monkeypatch.setattr(stack.transport, "handle_async_request", recording)
    return wiretap


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def personal_markers() -> list[str]:
    """The persona's identity in the forms a careless log line might hold it."""
    year, month, day = PERSONA.birthdate.split("-")
    names = [PERSONA.given_name, PERSONA.family_name]
    markers = {form for name in names for form in (name, strip_accents(name))}
    markers |= {f"{n.casefold()}" for n in list(markers)}
    markers |= {
        f"{year}-{month}-{day}",
        f"{day}/{month}/{year}",
        f"{year}{month}{day}",
        f"{day}-{month}-{year}",
        f"{day}.{month}.{year}",
        f"{month}/{day}/{year}",
        f"{year}/{month}/{day}",
    }
    return sorted(markers)


def readable_forms(line: str) -> list[str]:
    """A line as written and, for JSON, with escapes decoded (``\\u00c9`` is ``É``)."""
    forms = [line]
    with contextlib.suppress(ValueError):
        forms.append(json.dumps(json.loads(line), ensure_ascii=False))
    return forms


def leaks(lines: list[str], markers: list[str]) -> list[tuple[str, str]]:
    found = []
    for line in lines:
        for form in readable_forms(line):
            folded = strip_accents(form).casefold()
            for marker in markers:
                if strip_accents(marker).casefold() in folded:
                    found.append((marker, line))
    return found


async def run_the_story(stack: Stack) -> None:
    """Grant, transfer, a refused second transfer, a new consent, revoke, refused."""
    browser = stack.browser()
    first = await stack.grant([cnaf_details()], browser=browser)
    ok = await stack.sp.fetch(
        "cnaf", "quotient_familial", first.access_token, params={"annee": "2025", "mois": "01"}
    )
    assert ok.status_code == 200, ok.text
    again = await stack.sp.fetch(
        "cnaf", "quotient_familial", first.access_token, params={"annee": "2025", "mois": "01"}
    )
    assert again.status_code == 403
    assert again.json()["type"] == "urn:gateway:error:consent_exhausted"

    second = await stack.grant([dgfip_details(max_transfers=2)], browser=browser)
    ok = await stack.sp.fetch(
        "dgfip", "revenu_fiscal", second.access_token, params={"annee": "2024"}
    )
    assert ok.status_code == 200, ok.text
    page = await revoke_on_my_page(browser, f"{ISSUER}/me", second.consent_id)
    assert page.status_code == 200
    refused = await stack.sp.fetch(
        "dgfip", "revenu_fiscal", second.access_token, params={"annee": "2024"}
    )
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:gateway:error:consent_revoked"

    # A person who says no, and a client whose request is refused, leave entries too.
    denied = await stack.consent([cnaf_details()], browser=browser, decision="deny")
    assert denied["error"] == "access_denied"
    refused_request = await stack.consent([cnaf_details(purpose="school-canteen-pricing")])
    assert refused_request["error"] == "invalid_authorization_details"


async def test_no_personal_data_or_credential_in_logs_or_trail(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wiretap = tap(stack, monkeypatch)
    capsys.readouterr()  # start from this test's own lines

    await run_the_story(stack)

    captured = capsys.readouterr()
    log_lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    trail = await stack.trail()
    trail_lines = [json.dumps(e, ensure_ascii=False) for e in trail]

    # The story ran and was recorded: the checks below are not vacuous.
    types = {e["type"] for e in trail}
    assert {
        "consent.granted",
        "consent.denied",
        "consent.revoked",
        "consent.exhausted",
        "token.issued",
        "transfer.completed",
        "transfer.denied",
        "request.refused",
    } <= types
    events = {json.loads(line).get("event") for line in log_lines if line.startswith("{")}
    assert {"http.request", "token.issued"} <= events
    assert len(log_lines) > 20

    # The identity did travel: the identity provider sent it, the providers received it.
    assert wiretap.id_tokens
    id_claims = jwt.decode(wiretap.id_tokens[0], options={"verify_signature": False})
    assert id_claims["given_name"] == PERSONA.given_name
    assert id_claims["birthdate"] == PERSONA.birthdate
    assert wiretap.provider_assertions
    for assertion in wiretap.provider_assertions:
        claims = jwt.decode(assertion, options={"verify_signature": False})
        assert claims["family_name"] == PERSONA.family_name
        assert claims["birthdate"] == PERSONA.birthdate

    # ... and stayed out of every log line and every trail entry.
    markers = personal_markers()
    assert leaks(log_lines, markers) == []
    assert leaks(trail_lines, markers) == []

    # No credential in the logs (nor in the trail).
    kinds = set(wiretap.secrets)
    assert {"code", "access_token", "id_token", "dpop_proof", "client_assertion"} <= kinds
    assert "authorization_bearer" in kinds  # the provider assertions
    logged = "\n".join(log_lines)
    recorded = "\n".join(trail_lines)
    for kind, value in wiretap.all():
        assert value not in logged, f"a {kind} appears in the logs"
        assert value not in recorded, f"a {kind} appears in the trail"
        # A JWT's signature alone is as identifying as the whole token.
        if value.count(".") == 2:
            signature = value.rsplit(".", 1)[1]
            assert signature not in logged, f"the signature of a {kind} appears in the logs"
