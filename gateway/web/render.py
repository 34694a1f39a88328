"""Render the person-facing pages to HTML, and the headers they must be sent with.

The templates get ``lang``, ``view`` and ``lang_links`` in their context; the
globals ``t`` (translate into the page language), ``state_label``,
``outcome_label`` and ``acr_label``; and the filter ``dt`` (a datetime in the
page language).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context

from gateway.web import i18n
from gateway.web.i18n import Lang
from gateway.web.views import ConsentPageView, ErrorPageView, MePageView, MessagePageView

_HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final[Path] = _HERE / "static"
TEMPLATE_DIR: Final[Path] = _HERE / "templates"

_CSP_BASE: Final = (
    "default-src 'none'",
    "style-src 'self'",
    "img-src 'self'",
)
_CSP_TAIL: Final = (
    "frame-ancestors 'none'",
    "base-uri 'none'",
)


def security_headers(extra_form_action: Iterable[str] = ()) -> dict[str, str]:
    """Headers for every page; ``extra_form_action`` adds origins to CSP ``form-action``.

    The consent page needs the client's redirect origin there: Chrome applies
    ``form-action`` to the redirect that follows the form post. Each entry may
    be a full URL; only its origin is kept, so a path, a quote or a ``;`` can
    never reach the policy.
    """
    sources = ["'self'"]
    for url in extra_form_action:
        origin = _origin(url)
        if origin not in sources:
            sources.append(origin)
    csp = "; ".join((*_CSP_BASE, "form-action " + " ".join(sources), *_CSP_TAIL))
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        # Legacy twin of frame-ancestors for browsers without CSP level 2.
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _origin(url: str) -> str:
    """``https://sp.example/cb?x`` -> ``https://sp.example``; ValueError if not http(s)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # userinfo has no place in a CSP source
    if (
        parts.scheme not in ("https", "http")
        or not host
        or any(c.isspace() or c in ";,'\"" for c in host)
    ):
        raise ValueError(f"not an http(s) origin: {url!r}")
    return f"{parts.scheme}://{host.lower()}"


SECURITY_HEADERS: Final[Mapping[str, str]] = MappingProxyType(security_headers())


@pass_context
def _t(context: Context, key: str, **params: str | int) -> str:
    return i18n.translate(context["lang"], key, **params)


@pass_context
def _dt(context: Context, value: datetime) -> str:
    return i18n.format_datetime(value, context["lang"])


@pass_context
def _state_label(context: Context, state: str) -> str:
    return i18n.state_label(context["lang"], state)


@pass_context
def _outcome_label(context: Context, outcome: str) -> str:
    return i18n.outcome_label(context["lang"], outcome)


@pass_context
def _reason_label(context: Context, code: str) -> str:
    return i18n.reason_label(context["lang"], code)


@pass_context
def _acr_label(context: Context, acr: str | None) -> str:
    return i18n.acr_label(context["lang"], acr)


def _build_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,  # every template is HTML; every view string is untrusted
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates ship with the package and never change at run time
    )
    env.globals.update(
        t=_t,
        state_label=_state_label,
        outcome_label=_outcome_label,
        reason_label=_reason_label,
        acr_label=_acr_label,
    )
    env.filters["dt"] = _dt
    return env


ENVIRONMENT: Final[Environment] = _build_environment()


def with_lang(page_url: str, lang: Lang) -> str:
    """The same page in another language: ``/x?a=1`` -> ``/x?a=1&lang=en``.

    Only the path and query are kept, so the link always stays on this site;
    a path a browser could read as another host (``//x``, ``/\\x``) is dropped.
    """
    parts = urlsplit(page_url)
    path = parts.path
    if not path.startswith("/") or path[1:2] in ("/", "\\"):
        path = ""
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "lang"]
    query.append(("lang", lang))
    return f"{path}?{urlencode(query)}"


def _render(template: str, lang: Lang, page_url: str, view: Any) -> str:
    links = {code: with_lang(page_url, code) for code in i18n.SUPPORTED}
    return ENVIRONMENT.get_template(template).render(lang=lang, view=view, lang_links=links)


def render_consent(view: ConsentPageView, lang: Lang, *, page_url: str = "") -> str:
    """The consent screen. ``page_url`` (path and query of this request) keeps the
    language links on the same request, e.g. ``/oauth/authorize?request_uri=...``."""
    return _render("consent.html", lang, page_url, view)


def render_me(view: MePageView, lang: Lang, *, page_url: str = "/me") -> str:
    """The "my data" page."""
    return _render("me.html", lang, page_url, view)


def render_error(view: ErrorPageView, lang: Lang, *, page_url: str = "") -> str:
    """An error page; send it with ``view.status``."""
    return _render("error.html", lang, page_url, view)


def render_message(view: MessagePageView, lang: Lang, *, page_url: str = "") -> str:
    """A short message page."""
    return _render("message.html", lang, page_url, view)
