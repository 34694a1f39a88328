"""The person's pages end to end: the consent screen, "my data" and its JSON twin.

Each test plays a person with the scripted :class:`Browser` (cookies kept, one
redirect at a time, forms filled as shown) and checks both what the person
sees and what the trail and the database keep.
"""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from gateway.app import sweep
from gateway.demo.personas import PERSONAS
from gateway.demo.spclient import AuthorizationError, Pkce, ServiceProviderClient
from gateway.demo.story import Browser, forms_of, query_of
from gateway.storage.models import authorization_codes, consents
from gateway.web.i18n import Lang, format_datetime, translate
from tests.conftest import ISSUER, SP_BASE, Stack, cnaf_details, dgfip_details

REDIRECT_URI = f"{SP_BASE}/callback"
NBSP = "\u00a0"


# --------------------------------------------------------------------------- helpers


def at_client(location: str) -> bool:
    return location.startswith(REDIRECT_URI)


def text_of(response: httpx.Response) -> str:
    """The page as a person reads it: entities decoded, no-break spaces as spaces."""
    return html.unescape(response.text).replace(NBSP, " ")


def t(lang: Lang, key: str, **params: Any) -> str:
    return translate(lang, key, **params).replace(NBSP, " ")


async def open_consent_page(
    stack: Stack,
    browser: Browser,
    details: list[dict[str, Any]] | None = None,
    *,
    persona: str = "marianne",
) -> httpx.Response:
    """From the client's authorization URL to the consent screen (logging in if needed)."""
    pkce = Pkce.new()
    stack.last_pkce = pkce
    url = stack.sp.authorization_url(details or [cnaf_details()], state="st-1", pkce=pkce)
    page = await browser.follow(await browser.get(url), stop=at_client)
    assert not page.is_redirect, page.headers.get("location")
    if any(f.radios.get("persona") for f in forms_of(page.text)):
        answer = await browser.submit(page, choose={"persona": persona})
        page = await browser.follow(answer, stop=at_client)
    assert page.status_code == 200, page.text
    assert urlsplit(str(page.url)).path.startswith("/consent/")
    return page


def consent_id_of(page: httpx.Response) -> str:
    return urlsplit(str(page.url)).path.rsplit("/", 1)[1]


async def decide(
    browser: Browser, page: httpx.Response, decision: str, *, omit_csrf: bool = False
) -> httpx.Response:
    return await browser.submit(
        page, press=("decision", decision), omit=("csrf_token",) if omit_csrf else ()
    )


async def log_in(stack: Stack, browser: Browser, persona: str) -> httpx.Response:
    """Open "my data" in a fresh browser and log in as ``persona``; returns the page."""
    page = await browser.follow(await browser.get(f"{ISSUER}/me"))
    answer = await browser.submit(page, choose={"persona": persona})
    page = await browser.follow(answer)
    assert page.status_code == 200, page.text
    assert urlsplit(str(page.url)).path == "/me"
    return page


async def granted(
    stack: Stack, browser: Browser, details: list[dict[str, Any]] | None = None
) -> str:
    """A consent granted in ``browser`` (whose session stays logged in); returns its id."""
    page = await open_consent_page(stack, browser, details)
    answer = await decide(browser, page, "grant")
    assert answer.status_code == 303
    assert "code" in query_of(answer.headers["location"])
    return consent_id_of(page)


async def consent_row(stack: Stack, consent_id: str) -> Any:
    async with stack.rt.engine.connect() as conn:
        row = (await conn.execute(select(consents).where(consents.c.id == consent_id))).first()
    assert row is not None
    return row


async def entries(stack: Stack, kind: str, consent_id: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in await stack.trail()
        if e["type"] == kind and (consent_id is None or e.get("consent_id") == consent_id)
    ]


def sections(page: httpx.Response) -> tuple[str, str]:
    """The "active" and "past" sections of "my data"."""
    text = text_of(page)
    active_start = text.index('id="active"')
    past_start = text.index('id="past"')
    return text[active_start:past_start], text[past_start:]


async def api_consents(browser: Browser) -> dict[str, Any]:
    response = await browser.get(f"{ISSUER}/api/me/consents")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def api_revoke(browser: Browser, consent_id: str, csrf: str | None) -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf is not None else {}
    return await browser.http.post(f"{ISSUER}/api/me/consents/{consent_id}/revoke", headers=headers)


# --------------------------------------------------------------------------- consent screen


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_consent_page_explains_the_request(stack: Stack, lang: Lang) -> None:
    browser = stack.browser(lang)
    details = [cnaf_details(max_transfers=2), dgfip_details()]
    before = stack.clock()
    page = await open_consent_page(stack, browser, details)
    after = stack.clock()

    text = text_of(page)
    policy = stack.rt.policy
    assert policy.clients["mairie-demoville"].name in text
    purpose = policy.purposes["family-benefit-eligibility"]
    assert purpose.label.in_(lang) in text
    for provider_id, resource_id in (("cnaf", "quotient_familial"), ("dgfip", "revenu_fiscal")):
        provider = policy.providers[provider_id]
        assert provider.name in text
        resource = provider.resources[resource_id]
        assert resource.label.in_(lang) in text
        for field in resource.fields:
            assert field.label.in_(lang) in text
    # A resource that was not asked for is not shown.
    other = policy.providers["cnaf"].resources["composition_familiale"]
    assert other.label.in_(lang) not in text
    # Transfers: at most 2 from the CNAF, once from the DGFiP.
    assert t(lang, "consent.times", times=t(lang, "consent.times_many", n=2)) in text
    assert t(lang, "consent.times", times=t(lang, "consent.times_one")) in text
    # The expiry: the purpose's maximum validity from now.
    validity = timedelta(seconds=purpose.max_validity_seconds)
    shown = {
        t(lang, "consent.valid_until", date=format_datetime(moment + validity, lang))
        for moment in (before, after)
    }
    assert any(s in text for s in shown), shown
    # In the person's language, not the other one.
    other_lang: Lang = "en" if lang == "fr" else "fr"
    assert purpose.label.in_(other_lang) not in text
    assert t(lang, "consent.grant") in text
    assert f'lang="{lang}"' in page.text
    # Who is logged in, with the form that decides.
    persona = PERSONAS["marianne"]
    assert f"{persona.given_name} {persona.family_name}" in text
    (form,) = [f for f in forms_of(page.text) if f.method == "post"]
    assert form.action == urlsplit(str(page.url)).path
    assert form.fields["csrf_token"]
    assert ("decision", "grant") in form.buttons
    assert ("decision", "deny") in form.buttons


async def test_consent_page_security_headers(stack: Stack) -> None:
    page = await open_consent_page(stack, stack.browser())
    csp = page.headers["content-security-policy"]
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";")}
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert "'unsafe-inline'" not in csp
    # The form may post here and lead (by redirect) to the client's origin, nowhere else.
    assert directives["form-action"] == f"form-action 'self' {SP_BASE}"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_grant_without_csrf_token_is_refused(stack: Stack) -> None:
    browser = stack.browser()
    page = await open_consent_page(stack, browser)
    consent_id = consent_id_of(page)

    answer = await decide(browser, page, "grant", omit_csrf=True)

    assert answer.status_code == 403
    assert "location" not in answer.headers
    assert t("fr", "person_error.csrf.title") in text_of(answer)
    assert (await consent_row(stack, consent_id)).state == "pending"
    refused = await entries(stack, "request.refused", consent_id)
    assert [e["details"] for e in refused] == [{"endpoint": "consent", "code": "csrf_failed"}]
    assert not await entries(stack, "consent.granted")
    async with stack.rt.engine.connect() as conn:
        codes = (await conn.execute(select(authorization_codes))).all()
    assert codes == []

    # A wrong token is no better than none.
    (form,) = [f for f in forms_of(page.text) if f.method == "post"]
    forged = await browser.http.post(
        str(page.url), data={"csrf_token": "x" * 43, "decision": "grant"}
    )
    assert forged.status_code == 403
    assert form.fields["csrf_token"] != "x" * 43

    # The person can still decide with the page as shown.
    answer = await decide(browser, page, "grant")
    assert answer.status_code == 303
    assert "code" in query_of(answer.headers["location"])


async def test_deny_goes_back_to_the_client_without_a_code(stack: Stack) -> None:
    browser = stack.browser()
    page = await open_consent_page(stack, browser)
    consent_id = consent_id_of(page)

    answer = await decide(browser, page, "deny")

    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = query_of(location)
    assert query["error"] == "access_denied"
    assert query["state"] == "st-1"
    assert query["iss"] == ISSUER
    assert "code" not in query
    with pytest.raises(AuthorizationError, match="access_denied"):
        ServiceProviderClient.check_callback(query, expected_state="st-1", issuer=ISSUER)
    denied = await entries(stack, "consent.denied", consent_id)
    assert len(denied) == 1
    assert denied[0]["subject"]
    row = await consent_row(stack, consent_id)
    assert row.state == "denied"
    assert row.claims is None
    assert not await entries(stack, "consent.granted")
    async with stack.rt.engine.connect() as conn:
        codes = (
            await conn.execute(
                select(authorization_codes).where(authorization_codes.c.consent_id == consent_id)
            )
        ).all()
    assert codes == []
    # Nor can the page be used to change one's mind into a grant.
    again = await decide(browser, page, "grant")
    assert again.status_code == 409


async def test_consent_link_in_another_browser(stack: Stack) -> None:
    page = await open_consent_page(stack, stack.browser())
    elsewhere = stack.browser()
    await log_in(stack, elsewhere, "marianne")  # even the same person, logged in

    response = await elsewhere.get(str(page.url))

    assert response.status_code == 403
    assert t("fr", "person_error.other_browser.title") in text_of(response)
    assert "Traceback" not in response.text
    # Posting a decision from there fails the same way (CSRF token or not).
    (form,) = [f for f in forms_of(page.text) if f.method == "post"]
    posted = await elsewhere.http.post(
        str(page.url), data={"csrf_token": form.fields["csrf_token"], "decision": "grant"}
    )
    assert posted.status_code == 403
    assert (await consent_row(stack, consent_id_of(page))).state == "pending"


async def test_consent_page_after_the_decision(stack: Stack) -> None:
    browser = stack.browser("en")
    page = await open_consent_page(stack, browser)
    assert (await decide(browser, page, "grant")).status_code == 303

    again = await browser.get(str(page.url))

    assert again.status_code == 409
    text = text_of(again)
    assert t("en", "person_error.already_decided.title") in text
    assert 'href="/me"' in again.text
    second = await decide(browser, page, "grant")
    assert second.status_code == 409
    assert len(await entries(stack, "consent.granted")) == 1


# --------------------------------------------------------------------------- my data


async def test_my_data_lists_consents_with_a_revoke_form(stack: Stack) -> None:
    browser = stack.browser()
    consent_id = await granted(stack, browser)

    page = await browser.follow(await browser.get(f"{ISSUER}/me"))

    assert page.status_code == 200
    active, past = sections(page)
    assert stack.rt.policy.clients["mairie-demoville"].name in active
    assert stack.rt.policy.providers["cnaf"].resources["quotient_familial"].label.fr in active
    assert t("fr", "me.past_empty") in past
    (form,) = [f for f in forms_of(page.text) if f.action == f"/me/consents/{consent_id}/revoke"]
    assert form.method == "post"
    assert form.fields["csrf_token"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_revoke_form_without_csrf_is_refused(stack: Stack) -> None:
    browser = stack.browser()
    consent_id = await granted(stack, browser)
    page = await browser.follow(await browser.get(f"{ISSUER}/me"))

    answer = await browser.submit(
        page, action_contains=f"/me/consents/{consent_id}/revoke", omit=("csrf_token",)
    )

    assert answer.status_code == 403
    assert t("fr", "person_error.csrf.title") in text_of(answer)
    row = await consent_row(stack, consent_id)
    assert row.state == "active"
    assert row.claims is not None
    assert not await entries(stack, "consent.revoked")
    refused = await entries(stack, "request.refused", consent_id)
    assert [e["details"] for e in refused] == [{"endpoint": "revoke", "code": "csrf_failed"}]


async def test_revoke_on_my_data(stack: Stack) -> None:
    browser = stack.browser()
    consent_id = await granted(stack, browser)
    assert (await consent_row(stack, consent_id)).claims is not None
    page = await browser.follow(await browser.get(f"{ISSUER}/me"))

    answer = await browser.submit(page, action_contains=f"/me/consents/{consent_id}/revoke")
    assert answer.status_code == 303
    page = await browser.follow(answer)

    assert page.status_code == 200
    revoked = await entries(stack, "consent.revoked", consent_id)
    assert len(revoked) == 1
    assert revoked[0]["details"] == {"reason": "person_revoked"}
    assert (
        revoked[0]["subject"] == (await entries(stack, "consent.granted", consent_id))[0]["subject"]
    )
    row = await consent_row(stack, consent_id)
    assert row.state == "revoked"
    assert row.claims is None  # identity claims erased
    assert row.end_reason == "person_revoked"
    text = text_of(page)
    assert t("fr", "me.notice.revoked") in text
    active, past = sections(page)
    assert t("fr", "me.active_empty") in active
    assert stack.rt.policy.clients["mairie-demoville"].name in past
    assert t("fr", "me.status", state=t("fr", "state.revoked")) in past
    assert not [f for f in forms_of(page.text) if "/revoke" in f.action]


# --------------------------------------------------------------------------- JSON twin


async def test_json_twin_lists_and_revokes(stack: Stack) -> None:
    browser = stack.browser()
    consent_id = await granted(stack, browser)

    listing = await api_consents(browser)
    (item,) = listing["consents"]
    assert item["id"] == consent_id
    assert item["state"] == "active"
    assert item["client_id"] == "mairie-demoville"
    assert item["authorization_details"] == [cnaf_details()]
    csrf = listing["csrf_token"]

    missing = await api_revoke(browser, consent_id, None)
    assert missing.status_code == 403
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["type"] == "urn:gateway:error:csrf_failed"
    wrong = await api_revoke(browser, consent_id, csrf[::-1])
    assert wrong.status_code == 403
    assert (await consent_row(stack, consent_id)).state == "active"

    first = await api_revoke(browser, consent_id, csrf)
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "revoked"
    assert first.json()["ended_at"]
    second = await api_revoke(browser, consent_id, csrf)
    assert second.status_code == 200, second.text
    assert second.json()["state"] == "revoked"
    assert second.json()["ended_at"] == first.json()["ended_at"]

    assert len(await entries(stack, "consent.revoked", consent_id)) == 1
    assert (await consent_row(stack, consent_id)).claims is None
    (item,) = (await api_consents(browser))["consents"]
    assert item["state"] == "revoked"


async def test_json_twin_needs_a_session(stack: Stack) -> None:
    stranger = stack.browser()
    listing = await stranger.get(f"{ISSUER}/api/me/consents")
    assert listing.status_code == 401
    assert listing.json()["type"] == "urn:gateway:error:login_required"
    revoke = await api_revoke(stranger, "00000000-0000-0000-0000-000000000000", "x")
    assert revoke.status_code == 401


async def test_another_persons_consent_is_not_found(stack: Stack) -> None:
    marianne = stack.browser()
    consent_id = await granted(stack, marianne)
    jean = stack.browser()
    page = await log_in(stack, jean, "jean")
    assert PERSONAS["jean"].given_name in text_of(page)

    listing = await api_consents(jean)
    assert listing["consents"] == []
    answer = await api_revoke(jean, consent_id, listing["csrf_token"])
    assert answer.status_code == 404
    assert answer.json()["type"] == "urn:gateway:error:consent_not_found"
    unknown = await api_revoke(jean, "00000000-0000-0000-0000-000000000000", listing["csrf_token"])
    assert unknown.status_code == 404
    assert unknown.json() == answer.json()  # indistinguishable from a missing consent

    # Nor through the page form, with Jean's own CSRF token.
    (form,) = [f for f in forms_of(page.text) if f.action == "/logout"]
    posted = await jean.http.post(
        f"{ISSUER}/me/consents/{consent_id}/revoke", data={"csrf_token": form.fields["csrf_token"]}
    )
    assert posted.status_code == 404
    assert (await consent_row(stack, consent_id)).state == "active"
    assert not await entries(stack, "consent.revoked")


# --------------------------------------------------------------------------- login


async def test_login_state_mismatch_shows_a_readable_page(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    browser = stack.browser("en")
    to_idp = await browser.get(f"{ISSUER}/me")
    assert to_idp.status_code == 303  # off to the identity provider, session started
    real_state = query_of(to_idp.headers["location"])["state"]

    answer = await browser.get(
        f"{ISSUER}/login/callback?code=whatever&state=not-{real_state}&iss={ISSUER}/demo-idp"
    )

    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    text = text_of(answer)
    assert t("en", "person_error.login_failed.title") in text
    assert "Traceback" not in text
    assert "LoginFailed" not in text
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    # The session did not log in: the JSON twin still wants a login.
    assert (await browser.get(f"{ISSUER}/api/me/consents")).status_code == 401
    logs = capsys.readouterr().err
    assert '"login_state_mismatch"' in logs  # the reason is logged for the operator
    assert "Traceback" not in logs


async def test_login_callback_without_a_session(stack: Stack) -> None:
    answer = await stack.browser().get(f"{ISSUER}/login/callback?code=x&state=y")
    assert answer.status_code == 400
    assert t("fr", "person_error.login_expired.title") in text_of(answer)


# --------------------------------------------------------------------------- erasure at the end


async def test_claims_erased_when_the_consent_is_used_up(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details()])
    assert (await consent_row(stack, grant.consent_id)).claims is not None

    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
    )

    assert response.status_code == 200, response.text
    row = await consent_row(stack, grant.consent_id)
    assert row.state == "exhausted"
    assert row.claims is None
    exhausted = await entries(stack, "consent.exhausted", grant.consent_id)
    assert len(exhausted) == 1
    assert exhausted[0]["details"] == {"reason": "transfers_used"}


async def test_claims_erased_when_the_consent_expires(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details(max_transfers=2)])
    row = await consent_row(stack, grant.consent_id)
    assert row.claims is not None
    validity = stack.rt.policy.purposes["family-benefit-eligibility"].max_validity_seconds

    stack.clock.advance(seconds=validity - 5)
    await sweep(stack.rt)
    assert (await consent_row(stack, grant.consent_id)).state == "active"

    stack.clock.advance(seconds=10)
    await sweep(stack.rt)

    row = await consent_row(stack, grant.consent_id)
    assert row.state == "expired"
    assert row.claims is None
    expired = await entries(stack, "consent.expired", grant.consent_id)
    assert len(expired) == 1
    assert expired[0]["details"] == {"reason": "expired"}
    await sweep(stack.rt)  # a second sweep finds nothing more to do
    assert len(await entries(stack, "consent.expired")) == 1


async def test_sweep_expires_an_undecided_request(stack: Stack) -> None:
    browser = stack.browser()
    page = await open_consent_page(stack, browser)
    consent_id = consent_id_of(page)
    stack.clock.advance(seconds=stack.rt.settings.authorization_request_lifetime_seconds + 1)

    await sweep(stack.rt)

    row = await consent_row(stack, consent_id)
    assert row.state == "expired"
    assert len(await entries(stack, "consent.expired", consent_id)) == 1
    answer = await decide(browser, page, "grant")
    assert answer.status_code == 409


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_unknown_page_is_a_readable_page(
    stack: Stack, lang: Lang, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = await stack.browser(lang).get(f"{ISSUER}/no-such-page")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert t(lang, "person_error.not_found.title") in text_of(answer)
    assert "page_not_found" in answer.text
    assert "Traceback" not in capsys.readouterr().err
