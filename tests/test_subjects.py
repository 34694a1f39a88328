"""Pseudonyms and sealed identity claims (gateway.subjects)."""

from __future__ import annotations

import secrets

import pytest
from cryptography.exceptions import InvalidTag

from gateway.jose import b64url_decode
from gateway.subjects import (
    ClaimsBox,
    pairwise_subject,
    subject_lookup,
    trail_pseudonym,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
IDP = "https://idp.example.gouv.fr"
CLAIMS = {"given_name": "Marianne", "family_name": "Dupont", "birthdate": "1984-07-14"}


def test_lookup_is_stable_and_separates_people_and_issuers() -> None:
    a = subject_lookup(SECRET, IDP, "sub-1")
    assert a == subject_lookup(SECRET, IDP, "sub-1")
    assert len(a) == 64 and int(a, 16) >= 0  # hex HMAC-SHA256
    assert a != subject_lookup(SECRET, IDP, "sub-2")
    assert a != subject_lookup(SECRET, "https://other-idp.example", "sub-1")
    assert a != subject_lookup(OTHER_SECRET, IDP, "sub-1")
    # One deployment has one identity provider issuer; under it, distinct subs
    # never meet, even ones that look like the issuer/sub separator.
    assert a != subject_lookup(SECRET, IDP, "sub-1\x00")
    # The person's identifier is not readable from it.
    assert "sub-1" not in a


def test_pairwise_subjects_differ_per_audience() -> None:
    lookup = subject_lookup(SECRET, IDP, "sub-1")
    mairie = pairwise_subject(SECRET, "client", "mairie-demoville", lookup)
    ccas = pairwise_subject(SECRET, "client", "ccas-exempleville", lookup)
    dgfip = pairwise_subject(SECRET, "provider", "dgfip", lookup)
    assert len({mairie, ccas, dgfip}) == 3


def test_pairwise_subject_kind_matters() -> None:
    # A client and a provider that happen to share an id still get different subjects.
    lookup = subject_lookup(SECRET, IDP, "sub-1")
    assert pairwise_subject(SECRET, "client", "same", lookup) != pairwise_subject(
        SECRET, "provider", "same", lookup
    )


def test_pairwise_subjects_differ_per_person() -> None:
    one = subject_lookup(SECRET, IDP, "sub-1")
    two = subject_lookup(SECRET, IDP, "sub-2")
    assert pairwise_subject(SECRET, "client", "mairie-demoville", one) != pairwise_subject(
        SECRET, "client", "mairie-demoville", two
    )


def test_pairwise_subject_is_stable_and_url_safe() -> None:
    lookup = subject_lookup(SECRET, IDP, "sub-1")
    first = pairwise_subject(SECRET, "client", "mairie-demoville", lookup)
    assert first == pairwise_subject(SECRET, "client", "mairie-demoville", lookup)
    assert len(b64url_decode(first)) == 32
    # A new pseudonym secret gives a new identifier (the secret is what keeps it private).
    assert first != pairwise_subject(OTHER_SECRET, "client", "mairie-demoville", lookup)


def test_trail_pseudonym_changes_with_the_secret() -> None:
    a = trail_pseudonym(b"a" * 32)
    assert a == trail_pseudonym(b"a" * 32)
    assert a != trail_pseudonym(b"b" * 32)
    assert len(b64url_decode(a)) == 16


def test_trail_pseudonym_is_erased_without_a_secret() -> None:
    assert trail_pseudonym(None) == "erased"
    assert trail_pseudonym(secrets.token_bytes(32)) != "erased"


def test_claims_box_round_trip() -> None:
    box = ClaimsBox(secrets.token_bytes(32))
    sealed = box.seal(CLAIMS, "consent:c-1")
    assert box.open(sealed, "consent:c-1") == CLAIMS
    # Nothing readable at rest, and a fresh nonce each time.
    assert b"Marianne" not in sealed and b"1984" not in sealed
    assert box.seal(CLAIMS, "consent:c-1") != sealed


def test_claims_box_refuses_another_context() -> None:
    box = ClaimsBox(secrets.token_bytes(32))
    sealed = box.seal(CLAIMS, "consent:c-1")
    with pytest.raises(InvalidTag):
        box.open(sealed, "consent:c-2")


@pytest.mark.parametrize("position", [0, 12, -1])
def test_claims_box_refuses_tampered_ciphertext(position: int) -> None:
    box = ClaimsBox(secrets.token_bytes(32))
    sealed = bytearray(box.seal(CLAIMS, "consent:c-1"))
    sealed[position] ^= 0x01  # nonce, first ciphertext byte, tag
    with pytest.raises(InvalidTag):
        box.open(bytes(sealed), "consent:c-1")


def test_claims_box_refuses_another_key() -> None:
    sealed = ClaimsBox(secrets.token_bytes(32)).seal(CLAIMS, "consent:c-1")
    with pytest.raises(InvalidTag):
        ClaimsBox(secrets.token_bytes(32)).open(sealed, "consent:c-1")
