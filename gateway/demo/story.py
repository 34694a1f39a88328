"""The person's side of the demo story, played by a small scripted browser.

A :class:`Browser` keeps cookies, follows redirects one hop at a time and
fills in HTML forms the way a person would (hidden fields included, one
button pressed). ``gateway demo --scripted`` and the end-to-end tests use it
to click through the identity provider, the consent page and "my data".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx


class StoryError(Exception):
    """A step of the story did not go as a person would expect."""


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    radios: dict[str, list[str]] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self.forms.append(self._current)
            return
        form = self._current
        if form is None:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text").lower()
            if kind == "radio":
                form.radios.setdefault(name, []).append(a.get("value", ""))
            elif kind in {"submit", "button"}:
                form.buttons.append((name, a.get("value", "")))
            else:
                form.fields[name] = a.get("value", "")
        elif tag == "button" and name:
            form.buttons.append((name, a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def forms_of(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


class Browser:
    """A cookie-keeping client that a script drives like a person."""

    def __init__(self, http: httpx.AsyncClient, accept_language: str = "fr") -> None:
        self.http = http
        self.accept_language = accept_language

    async def get(self, url: str) -> httpx.Response:
        return await self.http.get(url, headers={"Accept-Language": self.accept_language})

    async def follow(
        self, response: httpx.Response, *, stop: Callable[[str], bool] = lambda _: False
    ) -> httpx.Response:
        """Follow redirects until a page, or until ``stop(location)`` says to hand over."""
        for _ in range(10):
            if not response.is_redirect:
                return response
            location = urljoin(str(response.url), response.headers["location"])
            if stop(location):
                return response
            response = await self.get(location)
        raise StoryError("too many redirects")

    async def submit(
        self,
        page: httpx.Response,
        *,
        choose: Mapping[str, str] | None = None,
        press: tuple[str, str] | None = None,
        form_index: int = 0,
        action_contains: str | None = None,
        omit: tuple[str, ...] = (),
    ) -> httpx.Response:
        """Fill a form of ``page`` (hidden fields kept), pick radios, press one button."""
        forms = forms_of(page.text)
        if action_contains is not None:
            forms = [f for f in forms if action_contains in f.action]
        if len(forms) <= form_index:
            raise StoryError(f"no form to submit on {page.url}")
        form = forms[form_index]
        data = {k: v for k, v in form.fields.items() if k not in omit}
        for name, value in (choose or {}).items():
            if value not in form.radios.get(name, []):
                raise StoryError(f"no choice {value!r} for {name!r} on {page.url}")
            data[name] = value
        if press is not None:
            if press not in form.buttons:
                raise StoryError(f"no button {press!r} on {page.url}")
            data[press[0]] = press[1]
        url = urljoin(str(page.url), form.action or str(page.url))
        if form.method != "post":
            raise StoryError("only POST forms are used in the story")
        return await self.http.post(
            url, data=data, headers={"Accept-Language": self.accept_language}
        )


@dataclass(frozen=True)
class ConsentOutcome:
    consent_page: httpx.Response  # the consent screen as the person saw it
    callback_url: str  # where the gateway sent the browser back to the client


async def walk_consent(
    browser: Browser,
    authorization_url: str,
    *,
    persona: str,
    decision: str,
    redirect_uri: str,
    omit_csrf: bool = False,
) -> ConsentOutcome:
    """From the client's authorization URL to its redirect URI: log in, then decide."""

    def at_client(location: str) -> bool:
        return location.startswith(redirect_uri)

    page = await browser.follow(await browser.get(authorization_url), stop=at_client)
    if page.is_redirect:
        # The gateway refused the request before any page (e.g. invalid details).
        return ConsentOutcome(page, urljoin(str(page.url), page.headers["location"]))
    if forms_of(page.text) and any(f.radios.get("persona") for f in forms_of(page.text)):
        # The identity provider's login page: pick the persona.
        answer = await browser.submit(page, choose={"persona": persona})
        page = await browser.follow(answer, stop=at_client)
    if page.status_code != 200:
        raise StoryError(f"consent page answered {page.status_code}")
    consent_page = page
    answer = await browser.submit(
        page,
        press=("decision", decision),
        omit=("csrf_token",) if omit_csrf else (),
    )
    if not answer.is_redirect:
        return ConsentOutcome(consent_page, "")
    return ConsentOutcome(consent_page, urljoin(str(answer.url), answer.headers["location"]))


async def revoke_on_my_page(browser: Browser, me_url: str, consent_id: str) -> httpx.Response:
    """Open "my data" and press the revoke button of one consent."""
    page = await browser.follow(await browser.get(me_url))
    if page.status_code != 200:
        raise StoryError(f"'my data' answered {page.status_code}")
    answer = await browser.submit(page, action_contains=f"/me/consents/{consent_id}/revoke")
    return await browser.follow(answer)
