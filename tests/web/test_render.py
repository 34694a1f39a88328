"""The person-facing pages: what a person needs is on them, safely and accessibly."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from itertools import pairwise

import pytest

from gateway.web import i18n
from gateway.web.i18n import Lang, translate
from gateway.web.render import (
    SECURITY_HEADERS,
    STATIC_DIR,
    TEMPLATE_DIR,
    render_consent,
    render_error,
    render_me,
    render_message,
    security_headers,
    with_lang,
)
from gateway.web.views import (
    ConsentPageView,
    ConsentSummary,
    ErrorPageView,
    MePageView,
    MessagePageView,
    ProviderView,
    ResourceView,
    TransferView,
)

LANGS: tuple[Lang, ...] = i18n.SUPPORTED
NOW = datetime(2026, 11, 29, 14, 5, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'
_VOID = {"meta", "link", "input", "br", "img", "hr", "source", "area", "base", "col", "wbr"}


# --------------------------------------------------------------------------- a small HTML reader


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    form: int | None  # index of the enclosing <form> in Page.forms
    text: str = ""


@dataclass
class Page(HTMLParser):
    """Every element with its attributes, its text and the form it sits in."""

    html: str
    elements: list[Element] = field(default_factory=list)
    forms: list[Element] = field(default_factory=list)
    _open: list[Element] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.feed(self.html)
        self.close()
        assert not self._open, [e.tag for e in self._open]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        form = len(self.forms) - 1 if any(e.tag == "form" for e in self._open) else None
        element = Element(tag, {k: v or "" for k, v in attrs}, form)
        self.elements.append(element)
        if tag == "form":
            self.forms.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        assert self._open and self._open[-1].tag == tag, f"</{tag}> closes {self._open[-1:]}"
        self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def all(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k) == v for k, v in attrs.items())
        ]

    def one(self, tag: str, **attrs: str) -> Element:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, found)
        return found[0]

    def in_form(self, form: int) -> list[Element]:
        return [e for e in self.elements if e.form == form]

    @property
    def text(self) -> str:
        return _squash(self.one("main").text)


def _squash(text: str) -> str:
    """Collapse markup whitespace but keep the no-break spaces the text relies on."""
    return re.sub(r"[ \t\r\n]+", " ", text).strip()


def _check_page(html: str, lang: Lang) -> Page:
    """What every page must satisfy, whatever it shows."""
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>")
    assert page.one("html").attrs["lang"] == lang
    assert page.one("meta", name="viewport")
    assert page.one("link", rel="stylesheet").attrs["href"] == "/static/gateway.css"
    assert page.one("title").text.strip().endswith(translate(lang, "app.name"))
    assert page.one("main").attrs["id"] == "main"
    assert page.one("a", href="#main")
    # CSP: no scripts, no inline styles, no event handlers, nothing from elsewhere.
    assert not page.all("script") and not page.all("style") and not page.all("iframe")
    for element in page.elements:
        assert "style" not in element.attrs, element
        assert not any(name.startswith("on") for name in element.attrs), element
        for name in ("href", "src", "action"):
            assert not re.match(r"\s*(https?:)?//|\s*javascript:", element.attrs.get(name, ""))
    # Headings: one h1, then no level skipped.
    levels = [int(e.tag[1]) for e in page.elements if re.fullmatch(r"h[1-6]", e.tag)]
    assert levels[0] == 1 and levels.count(1) == 1, levels
    assert all(b <= a + 1 for a, b in pairwise(levels)), levels
    # ids are unique, and every ARIA reference points at one.
    ids = [e.attrs["id"] for e in page.elements if "id" in e.attrs]
    assert len(ids) == len(set(ids)), ids
    for element in page.elements:
        for name in ("aria-labelledby", "aria-describedby"):
            for ref in element.attrs.get(name, "").split():
                assert ref in ids, (element, ref)
    # Every control has a name a screen reader can read.
    for element in page.all("button") + page.all("a"):
        assert element.text.strip(), element
    for button in page.all("button"):
        assert button.attrs["type"] == "submit"
    # Every form posts, and carries the CSRF token.
    for index, form in enumerate(page.forms):
        assert form.attrs["method"] == "post"
        hidden = [e for e in page.in_form(index) if e.tag == "input"]
        assert any(e.attrs.get("name") == "csrf_token" for e in hidden), form
    # Both languages are offered, each in its own language.
    nav = page.one("nav")
    assert nav.attrs["aria-label"] == translate(lang, "app.language")
    switch = {e.attrs["hreflang"]: e for e in page.all("a") if "hreflang" in e.attrs}
    assert set(switch) == set(LANGS)
    assert switch[lang].attrs.get("aria-current") == "true"
    return page


# --------------------------------------------------------------------------- sample views


def _providers() -> tuple[ProviderView, ...]:
    return (
        ProviderView(
            name="DGFiP",
            resources=(
                ResourceView(
                    label="Revenu fiscal",
                    fields=("Revenu fiscal de référence", "Nombre de parts"),
                ),
            ),
            max_transfers=1,
        ),
        ProviderView(
            name="CNAF",
            resources=(
                ResourceView(label="Quotient familial", fields=("Quotient familial",)),
                ResourceView(label="Composition du foyer", fields=()),
            ),
            max_transfers=3,
        ),
    )


def _consent_view(**changes: object) -> ConsentPageView:
    view = ConsentPageView(
        consent_id="c-123",
        client_name="Mairie de Lyon",
        purpose_label="Tarif de la cantine",
        purpose_description="Calculer le tarif de la cantine selon vos revenus.",
        legal_basis_label="Une mission de service public",
        retention_days=30,
        providers=_providers(),
        expires_at=NOW,
        person_display_name="Marie Curie",
        acr="eidas2",
        action_url="/consent/c-123",
        csrf_token="csrf-abc",
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def _summary(**changes: object) -> ConsentSummary:
    summary = ConsentSummary(
        consent_id="c-1",
        client_name="Mairie de Lyon",
        purpose_label="Tarif de la cantine",
        state="active",
        providers=_providers(),
        transfers_used=1,
        transfers_allowed=3,
        created_at=datetime(2026, 11, 1, 8, 0, tzinfo=UTC),
        expires_at=NOW,
        ended_at=None,
        revoke_url="/me/consents/c-1/revoke",
    )
    return replace(summary, **changes)  # type: ignore[arg-type]


def _me_view(**changes: object) -> MePageView:
    view = MePageView(
        person_display_name="Marie Curie",
        active=(
            _summary(
                transfers=(
                    TransferView(
                        at=datetime(2026, 11, 2, 10, 30, tzinfo=UTC),
                        provider_name="DGFiP",
                        resource_label="Revenu fiscal",
                        outcome="completed",
                    ),
                ),
                receipt_url="/me/consents/c-1/receipt",
            ),
            _summary(
                consent_id="c-2", client_name="CAF du Rhône", revoke_url="/me/consents/c-2/revoke"
            ),
        ),
        past=(
            _summary(
                consent_id="c-3",
                client_name="Centre social",
                state="revoked",
                ended_at=datetime(2026, 10, 5, 9, 15, tzinfo=UTC),
                revoke_url=None,
            ),
            _summary(consent_id="c-4", client_name="Piscine", state="exhausted", revoke_url=None),
        ),
        csrf_token="csrf-me",
        logout_url="/logout",
        notice=None,
    )
    return replace(view, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- consent screen


@pytest.mark.parametrize("lang", LANGS)
def test_consent_page_shows_who_asks_what_and_until_when(lang: Lang) -> None:
    page = _check_page(render_consent(_consent_view(), lang), lang)
    h1 = page.one("h1").text
    assert h1 == translate(lang, "consent.heading", client="Mairie de Lyon")
    text = page.text
    for expected in (
        "Tarif de la cantine",
        "Calculer le tarif de la cantine selon vos revenus.",
        "Une mission de service public",
        translate(lang, "consent.retention_many", days=30),
        "Revenu fiscal de référence",
        "Nombre de parts",
        "Quotient familial",
        "Composition du foyer",
        translate(lang, "consent.by_provider", provider="DGFiP"),
        translate(lang, "consent.by_provider", provider="CNAF"),
        translate(lang, "consent.times", times=translate(lang, "consent.times_one")),
        translate(lang, "consent.times", times=translate(lang, "consent.times_many", n=3)),
        translate(lang, "consent.valid_until", date=i18n.format_datetime(NOW, lang)),
        translate(lang, "consent.signed_in_as", name="Marie Curie"),
        translate(lang, "consent.assurance", level=i18n.acr_label(lang, "eidas2")),
    ):
        assert expected in text, expected
    # Field labels are listed one per item, under their resource.
    field_lists = [
        [line.strip() for line in ul.text.splitlines() if line.strip()]
        for ul in page.all("ul", **{"class": "fields"})
    ]
    assert field_lists == [["Revenu fiscal de référence", "Nombre de parts"], ["Quotient familial"]]


def test_consent_page_in_french_uses_the_promised_words() -> None:
    text = _check_page(render_consent(_consent_view(), "fr"), "fr").text
    assert "Données transmises par DGFiP" in text
    assert "une seule fois" in text
    assert "au plus 3 fois" in text
    assert "29 novembre 2026 à 14 h 05 (UTC)" in text


@pytest.mark.parametrize("lang", LANGS)
def test_consent_form_offers_grant_and_deny_equally(lang: Lang) -> None:
    page = _check_page(render_consent(_consent_view(), lang), lang)
    form = page.one("form")
    assert form.attrs["action"] == "/consent/c-123"
    assert form.attrs["method"] == "post"
    assert page.one("input", type="hidden", name="csrf_token").attrs["value"] == "csrf-abc"
    grant = page.one("button", name="decision", value="grant")
    deny = page.one("button", name="decision", value="deny")
    assert grant.text == translate(lang, "consent.grant")
    assert deny.text == translate(lang, "consent.deny")
    assert grant.form == deny.form == 0
    # Equal prominence: the same styling for both choices.
    assert grant.attrs["class"] == deny.attrs["class"]
    # The person is told where to change their mind.
    assert page.one("a", href="/me").text == translate(lang, "me.title")


def test_consent_page_buttons_in_both_languages() -> None:
    fr = Page(render_consent(_consent_view(), "fr"))
    en = Page(render_consent(_consent_view(), "en"))
    assert fr.one("button", value="grant").text == "J’accepte de transmettre ces données"
    assert fr.one("button", value="deny").text == "Je refuse"
    assert en.one("button", value="grant").text == "I agree to share this data"
    assert en.one("button", value="deny").text == "I refuse"


@pytest.mark.parametrize(
    ("days", "key"),
    [(0, "consent.retention_zero"), (1, "consent.retention_one"), (90, "consent.retention_many")],
)
def test_consent_page_says_how_long_data_is_kept(days: int, key: str) -> None:
    page = Page(render_consent(_consent_view(retention_days=days), "en"))
    assert translate("en", key, days=days) in page.text


def test_consent_page_with_unknown_assurance_level() -> None:
    page = Page(render_consent(_consent_view(acr=None), "fr"))
    assert "Niveau de garantie de la connexion\u00a0: non précisé" in page.text


@pytest.mark.parametrize("lang", LANGS)
def test_consent_page_escapes_every_view_string(lang: Lang) -> None:
    hostile_provider = ProviderView(
        name=HOSTILE, resources=(ResourceView(label=HOSTILE, fields=(HOSTILE,)),), max_transfers=1
    )
    view = _consent_view(
        client_name=HOSTILE,
        purpose_label=HOSTILE,
        purpose_description=HOSTILE,
        legal_basis_label=HOSTILE,
        providers=(hostile_provider,),
        person_display_name=HOSTILE,
        action_url='/x" onmouseover="alert(1)',
        csrf_token='"><script>',
    )
    html = render_consent(view, lang)
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    page = _check_page(html, lang)
    assert page.one("form").attrs["action"] == '/x" onmouseover="alert(1)'
    assert page.one("input", name="csrf_token").attrs["value"] == '"><script>'


# --------------------------------------------------------------------------- my data


@pytest.mark.parametrize("lang", LANGS)
def test_me_page_lists_active_consents_with_a_revoke_form_each(lang: Lang) -> None:
    page = _check_page(render_me(_me_view(), lang), lang)
    assert page.one("h1").text == translate(lang, "me.title")
    cards = page.all("article")
    assert [c.attrs["class"] for c in cards] == [
        "card",
        "card",
        "card card--past",
        "card card--past",
    ]
    first = _squash(cards[0].text)
    for expected in (
        "Mairie de Lyon",
        translate(lang, "me.purpose", purpose="Tarif de la cantine"),
        translate(lang, "me.from_provider", provider="DGFiP"),
        "Revenu fiscal de référence",
        translate(lang, "me.transfers_used", used=1, allowed=3),
        translate(lang, "me.expires", date=i18n.format_datetime(NOW, lang)),
        translate(
            lang,
            "me.transfer",
            date=i18n.format_datetime(datetime(2026, 11, 2, 10, 30, tzinfo=UTC), lang),
            resource="Revenu fiscal",
            provider="DGFiP",
            outcome=i18n.outcome_label(lang, "completed"),
        ),
    ):
        assert expected in first, expected
    assert page.one("a", href="/me/consents/c-1/receipt").text == translate(lang, "me.receipt")
    # One revoke form per revocable consent, each with the token and a clear button.
    revoke_forms = [f for f in page.forms if "/revoke" in f.attrs["action"]]
    assert [f.attrs["action"] for f in revoke_forms] == [
        "/me/consents/c-1/revoke",
        "/me/consents/c-2/revoke",
    ]
    for form in revoke_forms:
        index = page.forms.index(form)
        controls = page.in_form(index)
        token = [e for e in controls if e.attrs.get("name") == "csrf_token"]
        assert [e.attrs["value"] for e in token] == ["csrf-me"]
        buttons = [e for e in controls if e.tag == "button"]
        assert [b.text for b in buttons] == [translate(lang, "me.revoke")]


def test_me_page_revoke_buttons_in_both_languages() -> None:
    assert Page(render_me(_me_view(), "fr")).all("button")[0].text == "Retirer mon consentement"
    assert Page(render_me(_me_view(), "en")).all("button")[0].text == "Revoke my consent"


def test_me_page_has_no_revoke_form_without_revoke_url() -> None:
    view = _me_view(active=(_summary(revoke_url=None),), past=())
    page = _check_page(render_me(view, "en"), "en")
    assert [f.attrs["action"] for f in page.forms] == ["/logout"]
    assert translate("en", "me.revoke") not in page.html


@pytest.mark.parametrize("lang", LANGS)
def test_me_page_shows_how_past_consents_ended(lang: Lang) -> None:
    page = _check_page(render_me(_me_view(), lang), lang)
    revoked, exhausted = (_squash(c.text) for c in page.all("article")[2:])
    assert translate(lang, "me.status", state=i18n.state_label(lang, "revoked")) in revoked
    ended = datetime(2026, 10, 5, 9, 15, tzinfo=UTC)
    assert translate(lang, "me.ended", date=i18n.format_datetime(ended, lang)) in revoked
    assert translate(lang, "me.status", state=i18n.state_label(lang, "exhausted")) in exhausted
    assert translate(lang, "me.history_empty") in exhausted


def test_me_page_in_french_names_the_end_state() -> None:
    text = Page(render_me(_me_view(), "fr")).text
    assert "Statut\u00a0: révoquée" in text
    assert "Statut\u00a0: utilisée" in text


@pytest.mark.parametrize("lang", LANGS)
def test_me_page_empty_states(lang: Lang) -> None:
    page = _check_page(render_me(_me_view(active=(), past=()), lang), lang)
    assert not page.all("article")
    assert [e.text for e in page.all("p", **{"class": "empty"})] == [
        translate(lang, "me.active_empty"),
        translate(lang, "me.past_empty"),
    ]


@pytest.mark.parametrize("lang", LANGS)
def test_me_page_notice_is_announced(lang: Lang) -> None:
    notice = translate(lang, "me.notice.revoked")
    page = _check_page(render_me(_me_view(notice=notice), lang), lang)
    assert page.one("div", role="status").text.strip() == notice
    assert not Page(render_me(_me_view(), lang)).all("div", role="status")


@pytest.mark.parametrize("lang", LANGS)
def test_me_page_logout_form(lang: Lang) -> None:
    page = _check_page(render_me(_me_view(), lang), lang)
    form = page.one("form", action="/logout")
    controls = page.in_form(page.forms.index(form))
    assert [e.attrs["value"] for e in controls if e.attrs.get("name") == "csrf_token"] == [
        "csrf-me"
    ]
    assert [e.text for e in controls if e.tag == "button"] == [translate(lang, "me.logout")]


def test_me_page_shows_a_non_active_state_among_current_permissions() -> None:
    page = Page(render_me(_me_view(active=(_summary(state="pending"),), past=()), "fr"))
    assert "Statut\u00a0: en attente" in page.text


def test_me_page_escapes_every_view_string() -> None:
    hostile = _summary(
        client_name=HOSTILE,
        purpose_label=HOSTILE,
        providers=(ProviderView(HOSTILE, (ResourceView(HOSTILE, (HOSTILE,)),), max_transfers=1),),
        transfers=(TransferView(NOW, HOSTILE, HOSTILE, "failed"),),
    )
    view = _me_view(person_display_name=HOSTILE, active=(hostile,), past=(hostile,), notice=HOSTILE)
    html = render_me(view, "en")
    assert "<script" not in html
    _check_page(html, "en")


# --------------------------------------------------------------------------- error and message


@pytest.mark.parametrize("lang", LANGS)
def test_error_page(lang: Lang) -> None:
    title, detail = i18n.error_text(lang, "request_expired", 410)
    view = ErrorPageView(
        status=410, title=title, detail=detail, code="request_expired", back_url="/me"
    )
    page = _check_page(render_error(view, lang), lang)
    assert page.one("h1").text == title
    assert detail in page.text
    assert translate(lang, "error.status", status=410) in page.text
    assert translate(lang, "error.code", code="request_expired") in page.text
    assert page.one("a", href="/me").text == translate(lang, "error.back")


def test_error_page_without_back_link_and_escaped() -> None:
    view = ErrorPageView(status=500, title=HOSTILE, detail=HOSTILE, code=HOSTILE, back_url=None)
    html = render_error(view, "fr")
    assert "<script" not in html
    page = _check_page(html, "fr")
    assert [a.text for a in page.all("a") if a.attrs["href"].startswith("/")] == []


@pytest.mark.parametrize("lang", LANGS)
def test_message_page(lang: Lang) -> None:
    view = MessagePageView(
        title=translate(lang, "logout.title"),
        body=translate(lang, "logout.body"),
        link_url="/me",
        link_label=None,
    )
    page = _check_page(render_message(view, lang), lang)
    assert page.one("h1").text == translate(lang, "logout.title")
    assert translate(lang, "logout.body") in page.text
    assert page.one("a", href="/me").text == translate(lang, "message.continue")


def test_message_page_with_a_labelled_link_or_none() -> None:
    labelled = MessagePageView("T", "B", link_url="/me", link_label=HOSTILE)
    html = render_message(labelled, "en")
    assert "<script" not in html
    assert Page(html).one("a", href="/me").text == HOSTILE
    bare = Page(render_message(MessagePageView("T", "B", None, None), "en"))
    assert not bare.all("a", href="/me")


# --------------------------------------------------------------------------- language links


def test_language_links_keep_the_rest_of_the_query() -> None:
    html = render_consent(_consent_view(), "fr", page_url="/authorize?request_uri=urn:x&lang=fr")
    links = {
        e.attrs["hreflang"]: e.attrs["href"] for e in Page(html).all("a") if "hreflang" in e.attrs
    }
    assert links == {
        "fr": "/authorize?request_uri=urn%3Ax&lang=fr",
        "en": "/authorize?request_uri=urn%3Ax&lang=en",
    }


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "?lang=en"),
        ("/me", "/me?lang=en"),
        ("/me?lang=fr&lang=de", "/me?lang=en"),
        ("/a?b=1&c=", "/a?b=1&c=&lang=en"),
        ("https://evil.example/x?y=1", "/x?y=1&lang=en"),
        ("//evil.example/x", "/x?lang=en"),
        ("/\\evil.example", "?lang=en"),
        ("relative", "?lang=en"),
    ],
)
def test_with_lang_stays_on_this_site(url: str, expected: str) -> None:
    assert with_lang(url, "en") == expected


# --------------------------------------------------------------------------- headers and assets


def test_security_headers() -> None:
    assert dict(SECURITY_HEADERS) == {
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    with pytest.raises(TypeError):
        SECURITY_HEADERS["Cache-Control"] = "public"  # type: ignore[index]


def test_security_headers_add_client_origins_to_form_action() -> None:
    csp = security_headers(
        ["https://SP.example/callback?x=1", "https://sp.example/other", "http://localhost:8080/cb"]
    )["Content-Security-Policy"]
    assert "form-action 'self' https://sp.example http://localhost:8080;" in csp


@pytest.mark.parametrize(
    "bad",
    ["javascript:alert(1)", "/relative", "https://", "https://a.example;script-src *", "data:x"],
)
def test_security_headers_refuse_what_is_not_an_origin(bad: str) -> None:
    with pytest.raises(ValueError):
        security_headers([bad])


def test_security_headers_drop_userinfo() -> None:
    csp = security_headers(["https://user:pw@sp.example/cb"])["Content-Security-Policy"]
    assert "https://sp.example;" in csp and "pw" not in csp


def test_stylesheet_is_shipped() -> None:
    assert (STATIC_DIR / "gateway.css").is_file()


def _relative_luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


@pytest.mark.parametrize(
    ("foreground", "background"),
    [
        ("text", "background"),
        ("text", "surface"),
        ("muted", "background"),
        ("muted", "surface"),
        ("accent", "background"),
        ("accent", "surface"),
        ("on-accent", "accent"),
        ("on-accent", "accent-hover"),
        ("on-danger", "danger"),
        ("on-danger", "danger-hover"),
        ("text", "notice-background"),
    ],
)
def test_text_colours_contrast_at_least_4_5_to_1(foreground: str, background: str) -> None:
    css = (STATIC_DIR / "gateway.css").read_text(encoding="utf-8")
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6});", css))
    lighter, darker = sorted(
        (_relative_luminance(colours[foreground]), _relative_luminance(colours[background])),
        reverse=True,
    )
    assert (lighter + 0.05) / (darker + 0.05) >= 4.5


def test_every_key_a_template_uses_is_in_the_catalogue() -> None:
    # Branches the tests above do not render still may not name a missing key.
    used: set[str] = set()
    for template in TEMPLATE_DIR.glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([\w.]+)["']\s*[,)]""", template.read_text("utf-8")))
    assert used
    assert used <= set(i18n.CATALOGUE["fr"]), used - set(i18n.CATALOGUE["fr"])
