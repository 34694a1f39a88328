"""Signed consent receipts: issued to the person, verifiable offline, tamper-evident."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.jose import TOKEN_ALGS, public_keys_from_jwks
from gateway.receipts import ReceiptInvalid, verify_receipt
from gateway.trail.note import Verifier
from tests.conftest import ISSUER, Stack, cnaf_details


async def _receipt(stack: Stack) -> tuple[str, str, dict[str, object]]:
    browser = stack.browser()
    grant = await stack.grant([cnaf_details()], browser=browser)
    answer = await browser.get(f"{ISSUER}/me/consents/{grant.consent_id}/receipt")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/jwt")
    jwks = (await stack.http.get(f"{ISSUER}/.well-known/jwks.json")).json()
    vkey = (await stack.http.get(f"{ISSUER}/trail/verifier-key")).text.strip()
    return answer.text.strip(), vkey, jwks


async def test_receipt_verifies_offline(stack: Stack, tmp_path: Path) -> None:
    token, vkey, jwks = await _receipt(stack)
    result = verify_receipt(
        token, public_keys_from_jwks(jwks, TOKEN_ALGS), verifier=Verifier.from_key(vkey)
    )
    assert result.proof_checked
    record = result.claims["receipt"]
    assert record["controller"]["id"] == "mairie-demoville"
    assert record["purposes"][0]["dpv_purpose"].startswith("https://w3id.org/dpv#")
    assert record["data"][0]["provider"] == "cnaf"
    (tmp_path / "r.jwt").write_text(token)
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    args = ["receipt", "verify", str(tmp_path / "r.jwt"), "--jwks", str(tmp_path / "jwks.json")]
    assert main([*args, "--verifier-key", vkey]) == 0


async def test_every_altered_character_of_the_file_fails(stack: Stack) -> None:
    token, vkey, jwks = await _receipt(stack)
    keys = public_keys_from_jwks(jwks, TOKEN_ALGS)
    verifier = Verifier.from_key(vkey)
    verify_receipt(token, keys, verifier=verifier)  # the original holds
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position, char in enumerate(token):
        replacement = "." if char != "." else "A"
        for candidate in (alphabet[(alphabet.find(char) + 1) % 64], replacement):
            altered = token[:position] + candidate + token[position + 1 :]
            with pytest.raises(ReceiptInvalid):
                verify_receipt(altered, keys, verifier=verifier)


@pytest.mark.parametrize("part", [0, 1, 2])
async def test_any_altered_byte_fails(stack: Stack, part: int) -> None:
    token, vkey, jwks = await _receipt(stack)
    keys = public_keys_from_jwks(jwks, TOKEN_ALGS)
    pieces = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(pieces[part] + "=" * (-len(pieces[part]) % 4)))
    for position in (0, len(raw) // 2, len(raw) - 1):
        altered = bytearray(raw)
        altered[position] ^= 0x01
        forged = list(pieces)
        forged[part] = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        with pytest.raises(ReceiptInvalid):
            verify_receipt(".".join(forged), keys, verifier=Verifier.from_key(vkey))


async def test_another_persons_receipt_is_not_found(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details()])
    other = stack.browser()
    await stack.consent([cnaf_details()], persona="jean", browser=other)
    answer = await other.get(f"{ISSUER}/me/consents/{grant.consent_id}/receipt")
    assert answer.status_code == 404
