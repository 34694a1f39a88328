"""Erasure: deleting a person's trail secret unlinks their entries and breaks no proof."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from sqlalchemy import select

import gateway.trail.merkle as merkle
from gateway.cli import main
from gateway.erasure import erase_subject
from gateway.storage.models import subjects
from gateway.trail.checkpoint import Checkpoint, open_checkpoint
from gateway.trail.note import Verifier
from gateway.trail.store import Trail
from tests.conftest import ISSUER, Stack, cnaf_details, dgfip_details


async def erase_cli(stack: Stack, monkeypatch: pytest.MonkeyPatch, pseudonym: str) -> int:
    """``gateway subject erase --pseudonym ...`` with the stack's configuration.

    The command runs its own event loop, so it runs in a thread here.
    """
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(stack.settings.data_dir))
    monkeypatch.setenv("GATEWAY_DATABASE_URL", stack.settings.database_url.value)
    monkeypatch.setenv("GATEWAY_POLICIES", str(stack.settings.policies_dir))
    monkeypatch.setenv("GATEWAY_ISSUER", ISSUER)
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    monkeypatch.delenv("GATEWAY_DEMO", raising=False)
    # The = form: a pseudonym is base64url, and one in 64 begins with "-".
    return await asyncio.to_thread(main, ["subject", "erase", f"--pseudonym={pseudonym}"])


async def fetch_cnaf(stack: Stack, token: str) -> None:
    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", token, params={"annee": "2025", "mois": "01"}
    )
    assert response.status_code == 200, response.text


async def fetch_dgfip(stack: Stack, token: str) -> None:
    response = await stack.sp.fetch("dgfip", "revenu_fiscal", token, params={"annee": "2024"})
    assert response.status_code == 200, response.text


async def checkpoint(stack: Stack) -> Checkpoint:
    await stack.rt.checkpointer.sign_if_grown(stack.rt.now())
    note = (await stack.http.get(f"{ISSUER}/trail/checkpoint")).text
    return open_checkpoint(note, Verifier.from_key(stack.rt.checkpointer.signer.verifier_key()))


async def secrets_by_pseudonym(stack: Stack) -> dict[str, Any]:
    from gateway.subjects import trail_pseudonym

    async with stack.rt.engine.connect() as conn:
        rows = (await conn.execute(select(subjects.c.id, subjects.c.trail_secret))).all()
    return {
        str(r.id): trail_pseudonym(bytes(r.trail_secret) if r.trail_secret else None) for r in rows
    }


def subject_of_first(trail: list[dict[str, Any]], kind: str, nth: int = 0) -> str:
    return str([e for e in trail if e["type"] == kind][nth]["subject"])


async def test_erasure_unlinks_and_keeps_every_proof(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marianne = stack.browser()
    grant_m = await stack.grant([cnaf_details(max_transfers=2)], browser=marianne)
    await fetch_cnaf(stack, grant_m.access_token)
    jean = stack.browser()
    grant_j = await stack.grant([dgfip_details(max_transfers=2)], persona="jean", browser=jean)
    trail = await stack.trail()
    p_m = subject_of_first(trail, "consent.granted", 0)
    p_j = subject_of_first(trail, "consent.granted", 1)
    assert p_m != p_j and "erased" not in {p_m, p_j}
    mine = [i for i, e in enumerate(trail) if e.get("subject") == p_m]
    assert len(mine) >= 3  # granted, transfer authorized and completed at least
    assert (await marianne.get(f"{ISSUER}/trail/entries/{mine[0]}")).status_code == 200
    before = await checkpoint(stack)
    async with stack.rt.engine.connect() as conn:
        bytes_before = [e.entry for e in await Trail.read(conn)]

    capsys.readouterr()
    assert await erase_cli(stack, monkeypatch, p_m) == 0
    assert "erased" in capsys.readouterr().out
    pseudonyms = await secrets_by_pseudonym(stack)
    assert sorted(pseudonyms.values()) == sorted(["erased", p_j])
    async with stack.rt.engine.connect() as conn:
        secrets = dict((await conn.execute(select(subjects.c.id, subjects.c.trail_secret))).all())
    assert sum(1 for s in secrets.values() if s is None) == 1
    # Erased once: the pseudonym names nobody any more.
    assert await erase_cli(stack, monkeypatch, p_m) == 1
    assert p_m in capsys.readouterr().err

    # Her consent is still active: what happens next is trailed as "erased".
    await fetch_cnaf(stack, grant_m.access_token)
    after = await stack.trail()
    new = after[len(trail) :]
    assert {e.get("subject") for e in new} - {None} == {"erased"}
    assert p_m not in {e.get("subject") for e in new}
    async with stack.rt.engine.connect() as conn:
        entries = await Trail.read(conn)
    assert [e.entry for e in entries[: len(bytes_before)]] == bytes_before  # nothing rewritten

    # Every proof still holds, and the new tree extends the one signed before erasure.
    now = await checkpoint(stack)
    assert now.size == len(entries) > before.size
    answer = await stack.http.get(
        f"{ISSUER}/trail/proof/consistency", params={"old": before.size, "new": now.size}
    )
    proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
    merkle.verify_consistency(proof, before.size, before.root, now.size, now.root)
    for e in entries:
        answer = await stack.http.get(
            f"{ISSUER}/trail/proof/inclusion", params={"index": e.index, "size": now.size}
        )
        proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
        merkle.verify_inclusion(proof, now.size, now.root, e.index, e.leaf_hash)

    # The erased person can no longer find her entries; Jean still finds his.
    for i in mine:
        assert (await marianne.get(f"{ISSUER}/trail/entries/{i}")).status_code == 404
    jeans = [i for i, e in enumerate(after) if e.get("subject") == p_j]
    assert jeans
    for i in jeans:
        assert (await jean.get(f"{ISSUER}/trail/entries/{i}")).status_code == 200
    # Jean erased too, then trailed: "erased" is nobody's pseudonym, so neither
    # erased person sees the other's later entries.
    assert await erase_cli(stack, monkeypatch, p_j) == 0
    await fetch_dgfip(stack, grant_j.access_token)
    final = await stack.trail()
    erased = [i for i, e in enumerate(final) if e.get("subject") == "erased"]
    assert erased
    for i in erased:
        assert (await marianne.get(f"{ISSUER}/trail/entries/{i}")).status_code == 404
        assert (await jean.get(f"{ISSUER}/trail/entries/{i}")).status_code == 404


async def test_unknown_pseudonym(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await stack.grant([cnaf_details()])
    assert await erase_subject(stack.settings, "no-such-pseudonym") is False
    assert await erase_subject(stack.settings, "erased") is False
    capsys.readouterr()
    assert await erase_cli(stack, monkeypatch, "AAAAAAAAAAAAAAAAAAAAAA") == 1
    assert "no person has the trail pseudonym" in capsys.readouterr().err
    # One pseudonym in 64 begins with "-": the = form reaches the lookup.
    assert await erase_cli(stack, monkeypatch, "-AAAAAAAAAAAAAAAAAAAAA") == 1
    assert "no person has the trail pseudonym" in capsys.readouterr().err
    assert "erased" not in set((await secrets_by_pseudonym(stack)).values())
