"""Language negotiation, the message catalogue and date formatting."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.web import i18n
from gateway.web.i18n import (
    CATALOGUE,
    CONSENT_STATES,
    TRANSFER_OUTCOMES,
    acr_label,
    choose,
    error_text,
    format_datetime,
    legal_basis_label,
    negotiate,
    outcome_label,
    reason_label,
    state_label,
    translate,
)


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


# --------------------------------------------------------------------------- catalogue


def test_both_catalogues_have_exactly_the_same_keys() -> None:
    assert set(CATALOGUE["fr"]) == set(CATALOGUE["en"])


@pytest.mark.parametrize("key", sorted(CATALOGUE["fr"]))
def test_both_languages_take_the_same_parameters(key: str) -> None:
    assert _placeholders(CATALOGUE["fr"][key]) == _placeholders(CATALOGUE["en"][key])


@pytest.mark.parametrize("lang", i18n.SUPPORTED)
def test_no_text_is_empty_or_padded(lang: i18n.Lang) -> None:
    for key, text in CATALOGUE[lang].items():
        assert text.strip(), key
        # Keys that are glued to a link in a template keep their edge spaces.
        if not key.startswith("consent.revoke_hint."):
            assert text == text.strip(), key


def test_french_punctuation_is_not_left_alone_at_the_start_of_a_line() -> None:
    # A plain space before ":" or "?" lets the punctuation wrap onto its own line.
    for key, text in CATALOGUE["fr"].items():
        assert not re.search(r" [:?!;»]|« ", text), key


def test_translate_fills_parameters() -> None:
    assert (
        translate("en", "consent.heading", client="Mairie") == "Mairie is asking for data about you"
    )
    assert translate("fr", "me.transfers_used", used=1, allowed=3) == (
        "Transmissions effectuées\u00a0: 1 sur 3"
    )


def test_translate_refuses_an_unknown_key() -> None:
    with pytest.raises(KeyError):
        translate("fr", "no.such.key")


def test_translate_refuses_a_missing_parameter() -> None:
    with pytest.raises(KeyError):
        translate("fr", "consent.heading")


def test_a_parameter_is_not_reinterpreted_as_a_template() -> None:
    assert translate("en", "consent.heading", client="{client}") == (
        "{client} is asking for data about you"
    )


# --------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("en-GB,en;q=0.9,fr;q=0.8", "en"),
        ("de, en;q=0.5", "en"),
        ("fr-CA", "fr"),
        ("en", "en"),
        ("EN-us", "en"),
        ("fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7", "fr"),
        ("en;q=0.4, fr;q=0.6", "fr"),
        ("fr;q=0.5, en;q=0.5", "fr"),  # a tie goes to the range listed first
        ("en;q=0.5, fr;q=0.5", "en"),
        ("de, *;q=0.1", "fr"),
        ("*", "fr"),
        ("", "fr"),
        (None, "fr"),
        ("de", "fr"),
        ("garbage;;;", "fr"),
        ("en;q=2", "fr"),  # q above 1 is malformed: the range is skipped
        ("en;q=0.5555", "fr"),  # more than three decimals is malformed
        ("en;level=1", "fr"),  # language ranges take no other parameter
        ("en_GB", "fr"),
        ("fr;q=0", "en"),  # q=0 means "not acceptable"
        ("fr;q=0, de", "en"),
        ("en;q=0", "fr"),
        ("en;q=0, fr;q=0", "fr"),  # nothing acceptable: still answer in French
        ("*;q=0", "fr"),
        ("en;q=0, *", "fr"),
        ("fr;q=0, *", "en"),
        ("fr;q=0, *;q=0.3", "en"),
        ("en-GB ; Q=0.8 , de", "en"),
        ("de, " * 40 + "en", "fr"),  # only the first ranges are read
    ],
)
def test_negotiate(header: str | None, expected: str) -> None:
    assert negotiate(header) == expected


@pytest.mark.parametrize(
    ("query", "header", "expected"),
    [
        ("en", "fr", "en"),
        ("fr", "en", "fr"),
        (" EN ", None, "en"),
        ("de", "en", "en"),
        ("", "en", "en"),
        (None, None, "fr"),
        ("en-GB", None, "fr"),
    ],
)
def test_choose_prefers_an_explicit_supported_language(
    query: str | None, header: str | None, expected: str
) -> None:
    assert choose(query, header) == expected


# --------------------------------------------------------------------------- dates


def test_format_datetime_in_french_and_english() -> None:
    dt = datetime(2026, 11, 29, 14, 5, tzinfo=UTC)
    assert format_datetime(dt, "fr") == "29 novembre 2026 à 14 h 05 (UTC)"
    assert format_datetime(dt, "en") == "29 November 2026 at 14:05 (UTC)"


def test_format_datetime_writes_the_french_first_of_the_month_and_short_hours() -> None:
    dt = datetime(2027, 8, 1, 9, 0, tzinfo=UTC)
    assert format_datetime(dt, "fr") == "1er août 2027 à 9 h 00 (UTC)"
    assert format_datetime(dt, "en") == "1 August 2027 at 09:00 (UTC)"


def test_format_datetime_converts_to_utc_and_reads_naive_values_as_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_datetime(datetime(2026, 1, 1, 0, 30, tzinfo=paris), "en") == (
        "31 December 2025 at 23:30 (UTC)"
    )
    assert format_datetime(datetime(2026, 2, 3, 4, 5), "en") == "3 February 2026 at 04:05 (UTC)"


@pytest.mark.parametrize("month", range(1, 13))
def test_every_month_has_a_name(month: int) -> None:
    dt = datetime(2026, month, 15, tzinfo=UTC)
    for lang in i18n.SUPPORTED:
        assert re.fullmatch(r"15 \w+ 2026 .+", format_datetime(dt, lang))


# --------------------------------------------------------------------------- labels


def test_state_labels_in_french() -> None:
    assert {s: state_label("fr", s) for s in CONSENT_STATES} == {
        "pending": "en attente",
        "active": "active",
        "revoked": "révoquée",
        "expired": "expirée",
        "exhausted": "utilisée",
        "denied": "refusée",
    }


def test_state_labels_exist_in_english_and_unknown_states_are_refused() -> None:
    assert state_label("en", "revoked") == "revoked"
    with pytest.raises(KeyError):
        state_label("en", "deleted")


def test_outcome_labels() -> None:
    assert [outcome_label("en", o) for o in TRANSFER_OUTCOMES] == [
        "in progress",
        "sent",
        "the organisation has no record about you",
        "failed",
        "refused by the gateway",
    ]


def test_reason_labels_group_technical_codes() -> None:
    assert reason_label("en", "consent_revoked") == "you had revoked your consent"
    assert reason_label("fr", "dpop_proof_replayed") == reason_label("fr", "token_invalid")
    with pytest.raises(KeyError):
        outcome_label("fr", "lost")


@pytest.mark.parametrize(
    ("acr", "fr", "en"),
    [
        ("eidas1", "faible", "low"),
        ("eidas2", "substantiel", "substantial"),
        ("eidas3", "élevé", "high"),
        (None, "non précisé", "not stated"),
        ("urn:other", "non précisé", "not stated"),
    ],
)
def test_acr_labels(acr: str | None, fr: str, en: str) -> None:
    assert (acr_label("fr", acr), acr_label("en", acr)) == (fr, en)


@pytest.mark.parametrize(
    ("iri", "key"),
    [
        ("https://w3id.org/dpv#Consent", "consent"),
        ("https://w3id.org/dpv#InformedConsent", "consent"),
        ("https://w3id.org/dpv#Contract", "contract"),
        ("https://w3id.org/dpv#LegalObligation", "legal_obligation"),
        ("https://w3id.org/dpv#VitalInterest", "vital_interest"),
        ("https://w3id.org/dpv#PublicInterest", "public_task"),
        ("https://w3id.org/dpv#OfficialAuthority", "public_task"),
        ("https://w3id.org/dpv#LegitimateInterestOfController", "legitimate_interest"),
        ("https://w3id.org/dpv/legal/eu/gdpr#A6-1-e", "public_task"),
        ("https://w3id.org/dpv/legal/eu/gdpr#A6-1-c", "legal_obligation"),
        ("dpv:Contract", "contract"),
        ("https://example.org/something-else", "unknown"),
    ],
)
def test_legal_basis_labels(iri: str, key: str) -> None:
    for lang in i18n.SUPPORTED:
        assert legal_basis_label(lang, iri) == translate(lang, f"legal_basis.{key}")


def test_every_person_error_has_a_title_and_a_detail() -> None:
    codes = {k.split(".")[1] for k in CATALOGUE["fr"] if k.startswith("person_error.")}
    for code in codes:
        for lang in i18n.SUPPORTED:
            title, detail = error_text(lang, code, 400)
            assert title == translate(lang, f"person_error.{code}.title")
            assert detail == translate(lang, f"person_error.{code}.detail")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "not_found"),
        (403, "forbidden"),
        (410, "request_expired"),
        (418, "bad_request"),
        (500, "internal"),
        (503, "unavailable"),
        (599, "internal"),
    ],
)
def test_an_unknown_error_code_falls_back_to_its_status(status: int, code: str) -> None:
    assert error_text("en", "no_such_code", status) == (
        translate("en", f"person_error.{code}.title"),
        translate("en", f"person_error.{code}.detail"),
    )
