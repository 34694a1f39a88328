"""The person's whole story, clicked through in a real Chromium, in French and in English.

Demo service provider → identity provider login → consent page (labels, fields,
keyboard) → grant → data shown at the service provider → "my data" shows the
consent, still active, and its transfers → revoke → the service provider's next
transfer is refused → the dashboard shows the refusal and why → the service
provider's home lists the revocation notice the gateway pushed.

The demo service provider asks for at most two transfers per provider and makes
one of each when the person comes back, so the consent is still active on "my
data" and its revocation is what stops the second.

Every page is saved as ``test-artifacts/browser/<lang>/<nn>-<name>.png``.
Run: ``pytest -m browser`` (needs Debian's ``chromium`` and ``pip install -e '.[browser]'``).
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Locator, Page

    from .conftest import Screenshots

# CI sets GATEWAY_REQUIRE_BROWSER=1: there a missing browser fails instead of skipping.
_REQUIRED = os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1"
if not Path("/usr/bin/chromium").exists():
    if _REQUIRED:
        raise RuntimeError("GATEWAY_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing")
    pytest.skip(
        "Debian's Chromium is not installed (apt-get install -y chromium)", allow_module_level=True
    )
if not _REQUIRED:
    pytest.importorskip(
        "playwright.async_api", reason="Playwright is not installed (pip install -e '.[browser]')"
    )

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
GATEWAY = "http://127.0.0.1:8080"
SP = "http://127.0.0.1:8090"
TIMEOUT_MS = 15_000
DESKTOP = {"width": 1024, "height": 768}
PHONE = {"width": 360, "height": 740}


def _toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Resource:
    provider: str
    provider_name: str
    label: dict[str, str]
    fields: dict[str, dict[str, str]]  # JSON pointer -> {"fr": ..., "en": ...}


def _resource(provider: str, resource: str) -> Resource:
    policy = _toml(POLICIES / "providers" / f"{provider}.toml")
    declared = policy["resources"][resource]
    return Resource(
        provider=provider,
        provider_name=policy["name"],
        label=declared["label"],
        fields={f["pointer"]: {"fr": f["fr"], "en": f["en"]} for f in declared["fields"]},
    )


# What the demo town hall asks for, in the order it asks (gateway/demo/client.py).
CNAF = _resource("cnaf", "quotient_familial")
DGFIP = _resource("dgfip", "revenu_fiscal")
ASKED = (CNAF, DGFIP)
CLIENT_NAME: str = _toml(POLICIES / "clients" / "mairie-demoville.toml")["name"]
PURPOSE: dict[str, Any] = _toml(POLICIES / "purposes.toml")["family-benefit-eligibility"]

# The words a person reads, written out here rather than taken from the catalogue.
TEXT: dict[str, dict[str, str]] = {
    "fr": {
        "locale": "fr-FR",
        "consent_heading": "{client} demande à recevoir des données vous concernant",
        "signed_in": "Connexion en tant que : {name}",
        "by_provider": "Données transmises par {provider}",
        "times": "Ces données seront transmises au plus 2 fois.",
        "reason_revoked": "motif : vous aviez retiré votre consentement",
        "legal_basis": "Votre consentement",
        "grant": "J’accepte de transmettre ces données",
        "deny": "Je refuse",
        "me": "Mes données",
        "active": "Autorisations en cours",
        "past": "Autorisations terminées",
        "used": "Transmissions effectuées : {used} sur {allowed}",
        "state_exhausted": "Statut : utilisée",
        "state_revoked": "Statut : révoquée",
        "sent": "transmise",
        "refused": "refusée par la passerelle",
        "revoke": "Retirer mon consentement",
        "revoked_notice": "Votre consentement a été retiré.",
        "not_found": "Demande introuvable",
    },
    "en": {
        "locale": "en-GB",
        "consent_heading": "{client} is asking for data about you",
        "signed_in": "Signed in as: {name}",
        "by_provider": "Data sent by {provider}",
        "times": "This data will be sent at most 2 times.",
        "reason_revoked": "reason: you had revoked your consent",
        "legal_basis": "Your consent",
        "grant": "I agree to share this data",
        "deny": "I refuse",
        "me": "My data",
        "active": "Current permissions",
        "past": "Past permissions",
        "used": "Transfers made: {used} of {allowed}",
        "state_exhausted": "Status: used up",
        "state_revoked": "Status: revoked",
        "sent": "sent",
        "refused": "refused by the gateway",
        "revoke": "Revoke my consent",
        "revoked_notice": "Your consent has been revoked.",
        "not_found": "Request not found",
    },
}
MONTHS = {
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "en": "January February March April May June July August September October November December",
}
VALID_UNTIL = {
    "fr": re.compile(
        r"Votre accord est valable jusqu’au (?P<day>1er|\d{1,2}) (?P<month>\w+) (?P<year>\d{4})"
        r" à (?P<hour>\d{1,2}) h (?P<minute>\d{2}) \(UTC\)\."
    ),
    "en": re.compile(
        r"Your agreement is valid until (?P<day>\d{1,2}) (?P<month>\w+) (?P<year>\d{4})"
        r" at (?P<hour>\d{2}):(?P<minute>\d{2}) \(UTC\)\."
    ),
}
# Both fixed by the example policies (demo SP: Marianne, persona logins).
SP_CHECK = "Vérifier mon éligibilité / Check my eligibility"
SP_AGAIN = "Redemander les données / Fetch again"
IDP_LOGIN = "Se connecter / Log in"

# One a11y pass over a page: what a screen-reader or keyboard user trips on first.
A11Y_PROBLEMS = """() => {
  const problems = [];
  const h1 = document.querySelectorAll('h1').length;
  if (h1 !== 1) problems.push(`${h1} h1 elements instead of one`);
  if (!document.documentElement.getAttribute('lang')) problems.push('<html> has no lang');
  if (!document.title.trim()) problems.push('empty <title>');
  if (!document.querySelector('meta[name=viewport]')) problems.push('no viewport meta');
  const controls = document.querySelectorAll(
    'input:not([type=hidden]):not([type=submit]):not([type=button]), select, textarea');
  for (const el of controls) {
    const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby');
    if (!named) problems.push(`form control without a label: ${el.outerHTML.slice(0, 100)}`);
  }
  for (const el of document.querySelectorAll('button, input[type=submit], [role=button]')) {
    const text = (el.innerText || el.value || el.getAttribute('aria-label') || '').trim();
    if (!text) problems.push(`button without text: ${el.outerHTML.slice(0, 100)}`);
  }
  for (const a of document.querySelectorAll('a[href]')) {
    if (!(a.innerText || a.getAttribute('aria-label') || '').trim())
      problems.push(`link without text: ${a.getAttribute('href')}`);
  }
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  for (const id of new Set(ids.filter((id, i) => ids.indexOf(id) !== i)))
    problems.push(`duplicate id ${id}`);
  for (const el of document.querySelectorAll('[aria-labelledby], [aria-describedby]')) {
    for (const attr of ['aria-labelledby', 'aria-describedby']) {
      for (const ref of (el.getAttribute(attr) || '').split(/\\s+/).filter(Boolean))
        if (!document.getElementById(ref)) problems.push(`${attr} points to missing #${ref}`);
    }
  }
  let previous = 0;
  for (const h of document.querySelectorAll('h1, h2, h3, h4, h5, h6')) {
    const level = Number(h.tagName[1]);
    if (previous && level > previous + 1)
      problems.push(`heading jumps from h${previous} to h${level}: ${h.innerText}`);
    previous = level;
  }
  return problems;
}"""

FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  return {tag: el.tagName, text: (el.innerText || el.value || '').trim(),
          outline: style.outlineStyle, width: style.outlineWidth};
}"""


def norm(text: str) -> str:
    """Whitespace as a person reads it (no-break spaces and line breaks become spaces)."""
    return " ".join(text.replace("\u00a0", " ").split())


async def text_of(locator: Locator) -> str:
    return norm(await locator.inner_text())


async def assert_accessible(page: Page, lang: str) -> None:
    assert await page.get_attribute("html", "lang") == lang
    problems = await page.evaluate(A11Y_PROBLEMS)
    assert problems == [], f"{page.url}: {problems}"


async def assert_fits_a_phone(page: Page, shots: Screenshots, name: str) -> None:
    """At 360 CSS pixels wide nothing sticks out sideways: no horizontal scrolling."""
    await page.set_viewport_size(PHONE)
    await shots.take(page, name)
    width, viewport = await page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width <= viewport, f"{page.url} is {width}px wide on a {viewport}px phone"
    await page.set_viewport_size(DESKTOP)


def assert_expiry_shown(text: str, lang: str, minutes: int) -> None:
    match = VALID_UNTIL[lang].search(text)
    assert match, f"no expiry sentence in {lang}: {text!r}"
    day = 1 if match["day"] == "1er" else int(match["day"])
    month = MONTHS[lang].split().index(match["month"]) + 1
    shown = datetime(
        int(match["year"]), month, day, int(match["hour"]), int(match["minute"]), tzinfo=UTC
    )
    expected = datetime.now(UTC) + timedelta(minutes=minutes)
    assert abs(shown - expected) <= timedelta(minutes=2), (shown, expected)


# --------------------------------------------------------------------------- steps


async def start_at_service_provider(page: Page, shots: Screenshots, name: str) -> None:
    await page.goto(f"{SP}/")
    await shots.take(page, name)
    await page.get_by_role("button", name=SP_CHECK).click()


async def log_in_as(page: Page, shots: Screenshots, persona: str) -> None:
    await page.wait_for_url(re.compile(r"/demo-idp/authorize\?"))
    await shots.take(page, f"idp-login-{persona}")
    await page.locator(f'input[type=radio][name=persona][value="{persona}"]').check()
    await page.get_by_role("button", name=IDP_LOGIN).click()
    await page.wait_for_url(re.compile(r"/consent/[^/?]+"))


async def tab_to_buttons(page: Page, lang: str) -> list[str]:
    """Tab from the top of the page until both decision buttons were focused."""
    t = TEXT[lang]
    seen: list[str] = []
    for _ in range(25):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(FOCUSED)
        if focused is None:
            continue
        seen.append(norm(focused["text"]))
        if focused["text"] == t["grant"] and focused["tag"] == "BUTTON":
            # A keyboard user must see where the focus is.
            assert focused["outline"] != "none", focused
        if t["grant"] in seen and t["deny"] in seen:
            return seen
    pytest.fail(f"grant/deny buttons not reached with Tab: focus went {seen}")


@dataclass(frozen=True)
class Transfer:
    heading: str
    http_status: int
    transfer_id: str
    rows: dict[str, str]  # data: pointer -> value; refusal: problem member -> value
    refused: bool


SP_SECTIONS = """() => [...document.querySelectorAll('main section, body > section')].map(s => ({
  heading: s.querySelector('h3').innerText,
  text: s.innerText,
  refused: s.classList.contains('refused'),
  rows: [...s.querySelectorAll('tr')].map(tr => [...tr.children].map(c => c.innerText.trim()))
}))"""


async def sp_transfers(page: Page) -> tuple[str, list[Transfer]]:
    """The consent id and the transfers the demo service provider's page shows."""
    body = norm(await page.inner_text("body"))
    consent = re.search(r"Consentement / Consent: (\S+)", body)
    assert consent, body
    transfers = []
    for section in await page.evaluate(SP_SECTIONS):
        text = norm(section["text"])
        status = re.search(r"HTTP (\d{3})", text)
        transfer_id = re.search(r"Transfer-Id: (\S+)", text)
        assert status and transfer_id, text
        rows = {r[0]: r[1] for r in section["rows"] if len(r) == 2}
        rows.pop("Champ / Field", None)
        transfers.append(
            Transfer(
                heading=norm(section["heading"]),
                http_status=int(status[1]),
                transfer_id=transfer_id[1],
                rows=rows,
                refused=section["refused"],
            )
        )
    return consent[1], transfers


def consent_card(page: Page, section: str, consent_id: str) -> Locator:
    """The card of one consent on "my data", in the "active" or "past" section."""
    return page.locator(
        f'section[aria-labelledby="{section}"] article:is('
        f':has(a[href*="{consent_id}"]), :has(form[action*="{consent_id}"]))'
    )


async def history(card: Locator) -> list[str]:
    return [norm(line) for line in await card.locator("ul.history > li").all_inner_texts()]


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the story


async def new_context(chromium: Browser, lang: str) -> BrowserContext:
    """A fresh browser profile whose Accept-Language is the person's language."""
    context = await chromium.new_context(locale=TEXT[lang]["locale"], viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_story_in_a_real_browser(
    demo_server: Path,
    chromium: Browser,
    screenshots: Callable[[str], Screenshots],
    lang: str,
) -> None:
    t = TEXT[lang]
    shots = screenshots(lang)
    context = await new_context(chromium, lang)
    sp = await context.new_page()

    # 1. The town hall's page → the identity provider → the consent page.
    await start_at_service_provider(sp, shots, "sp-home")
    await log_in_as(sp, shots, "marianne")
    await shots.take(sp, "consent")
    await assert_accessible(sp, lang)
    main = sp.locator("main")
    assert await text_of(sp.locator("h1")) == t["consent_heading"].format(client=CLIENT_NAME)
    page_text = await text_of(main)
    assert t["signed_in"].format(name="Marianne EXEMPLE-DÉMO") in page_text
    assert norm(PURPOSE["label"][lang]) in page_text
    assert norm(PURPOSE["description"][lang]) in page_text
    assert t["legal_basis"] in page_text
    assert_expiry_shown(page_text, lang, PURPOSE["max_validity_minutes"])
    # One consent page for both providers, each with its resource and exactly its fields.
    cards = main.locator("section.card")
    assert await cards.count() == len(ASKED)
    for asked in ASKED:
        card = sp.get_by_role("region", name=t["by_provider"].format(provider=asked.provider_name))
        assert await card.count() == 1, asked.provider
        assert await text_of(card.locator(".resources__label")) == asked.label[lang]
        fields = [norm(f) for f in await card.locator("ul.fields > li").all_inner_texts()]
        assert fields == [f[lang] for f in asked.fields.values()]
        assert t["times"] in await text_of(card)
    await assert_fits_a_phone(sp, shots, "consent-phone")
    # The decision is reachable with the keyboard alone, and is taken with it.
    order = await tab_to_buttons(sp, lang)
    assert order.index(t["grant"]) < order.index(t["deny"])
    await sp.keyboard.press("Shift+Tab")
    assert (await sp.evaluate(FOCUSED))["text"] == t["grant"]
    await sp.keyboard.press("Enter")

    # 2. Back at the town hall: only the consented fields, with their Transfer-Ids.
    await sp.wait_for_url(re.compile(rf"^{SP}/callback\?"))
    await shots.take(sp, "sp-data")
    consent_id, got = await sp_transfers(sp)
    assert is_uuid(consent_id), consent_id
    assert [g.heading.split(" / ")[0] for g in got] == [
        "Quotient familial (janvier 2025)",
        "Revenu fiscal de référence (revenus 2024)",
    ]
    for asked, transfer in zip(ASKED, got, strict=True):
        assert not transfer.refused and transfer.http_status == 200, transfer
        assert is_uuid(transfer.transfer_id), transfer
        assert set(transfer.rows) == set(asked.fields), transfer.rows  # minimised, nothing more
    assert got[0].rows["/quotient_familial"] == "812"
    assert got[1].rows["/revenu_fiscal_reference"] == "31250"

    # 3. "My data", in another tab of the same browser: the consent, active, and its transfers.
    me = await context.new_page()
    await me.goto(f"{GATEWAY}/me")
    await shots.take(me, "me-after-grant")
    await assert_accessible(me, lang)
    assert await text_of(me.locator("h1")) == t["me"]
    assert t["signed_in"].format(name="Marianne EXEMPLE-DÉMO") in await text_of(me.locator("main"))
    card = consent_card(me, "active", consent_id)
    assert await card.count() == 1, f"consent {consent_id} not among the active ones on /me"
    card_text = await text_of(card)
    assert CLIENT_NAME in card_text and norm(PURPOSE["label"][lang]) in card_text
    assert t["used"].format(used=2, allowed=4) in card_text
    for asked in ASKED:
        assert asked.label[lang] in card_text and asked.provider_name in card_text
    lines = await history(card)
    assert len(lines) == 2 and all(line.endswith(t["sent"]) for line in lines), lines
    await assert_fits_a_phone(me, shots, "me-phone")

    # 4. The person revokes it.
    await card.get_by_role("button", name=t["revoke"]).click()
    await me.wait_for_url(re.compile(r"/me\?notice=revoked"))
    await shots.take(me, "me-revoked")
    await assert_accessible(me, lang)
    assert t["revoked_notice"] in await text_of(me.get_by_role("status"))
    assert await consent_card(me, "active", consent_id).count() == 0
    past = consent_card(me, "past", consent_id)
    assert t["state_revoked"] in await text_of(past)
    assert await past.get_by_role("button", name=t["revoke"]).count() == 0

    # 5. The town hall asks again with its still-valid token: refused, consent revoked.
    await sp.bring_to_front()
    await sp.get_by_role("button", name=SP_AGAIN).click()
    await sp.wait_for_url(f"{SP}/again")
    await shots.take(sp, "sp-refused-revoked")
    again_id, refused = await sp_transfers(sp)
    assert again_id == consent_id and len(refused) == len(ASKED)
    for transfer in refused:
        assert transfer.refused and transfer.http_status == 403, transfer
        assert transfer.rows["type"].endswith("consent_revoked"), transfer.rows
        assert is_uuid(transfer.transfer_id), transfer

    # 6. The dashboard shows the refusals, and why, next to the two transfers.
    await me.bring_to_front()
    await me.reload()
    await shots.take(me, "me-after-refusal")
    lines = await history(consent_card(me, "past", consent_id))
    refusals = [line for line in lines if t["refused"] in line]
    assert len(refusals) == 2 and all(t["reason_revoked"] in line for line in refusals), lines
    assert sum(line.endswith(t["sent"]) for line in lines) == 2, lines

    # 7. A readable, accessible error page.
    response = await me.goto(f"{GATEWAY}/consent/{uuid.uuid4()}")
    assert response is not None and response.status == 404
    await shots.take(me, "error-unknown-request")
    await assert_accessible(me, lang)
    assert await text_of(me.locator("h1")) == t["not_found"]

    # 8. The gateway pushed a revocation notice to the town hall.
    notice = sp.locator("table tr", has_text=consent_id)
    for _ in range(20):
        await sp.goto(f"{SP}/")
        if await notice.count():
            break
        await sp.wait_for_timeout(500)
    await shots.take(sp, "sp-home-notice")
    assert await notice.count() == 1, "no revocation notice on the town hall's page"
    assert "revoked" in await text_of(notice)
    await context.close()
