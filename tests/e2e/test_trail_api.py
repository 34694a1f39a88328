"""The trail seen from outside: checkpoints, proofs, audit queries, offline verification."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import httpx
import pytest

import gateway.trail.merkle as merkle
from gateway.demo.spclient import ServiceProviderClient
from gateway.jose import SigningKey
from gateway.trail import tree as trail_tree
from gateway.trail.checkpoint import Checkpoint, open_checkpoint
from gateway.trail.note import Verifier
from gateway.trail.store import Trail
from gateway.trail.verify import verify_export
from tests.conftest import CNAF, ISSUER, Stack, cnaf_details, count_calls, dgfip_details


async def _story(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details()])
    await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
    )


async def test_checkpoint_and_proofs_verify(stack: Stack) -> None:
    empty = await stack.http.get(f"{ISSUER}/trail/checkpoint")
    assert empty.status_code == 404  # never a checkpoint for an empty tree
    await _story(stack)
    size = await stack.rt.checkpointer.sign_if_grown(stack.rt.now())
    assert size is not None and size == len(await stack.trail())
    key = (await stack.http.get(f"{ISSUER}/trail/verifier-key")).text.strip()
    note = (await stack.http.get(f"{ISSUER}/trail/checkpoint")).text
    cp = open_checkpoint(note, Verifier.from_key(key))
    assert cp.size == size
    async with stack.rt.engine.connect() as conn:
        from gateway.trail.store import Trail

        entries = await Trail.read(conn)
    for e in entries:
        answer = await stack.http.get(
            f"{ISSUER}/trail/proof/inclusion", params={"index": e.index, "size": cp.size}
        )
        proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
        merkle.verify_inclusion(proof, cp.size, cp.root, e.index, e.leaf_hash)
    # more entries, a new checkpoint, consistent with the first
    await _story(stack)
    await stack.rt.checkpointer.sign_if_grown(stack.rt.now())
    cp2 = open_checkpoint(
        (await stack.http.get(f"{ISSUER}/trail/checkpoint")).text, Verifier.from_key(key)
    )
    answer = await stack.http.get(
        f"{ISSUER}/trail/proof/consistency", params={"old": cp.size, "new": cp2.size}
    )
    proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
    merkle.verify_consistency(proof, cp.size, cp.root, cp2.size, cp2.root)


async def auditor_token(stack: Stack, key: SigningKey) -> tuple[ServiceProviderClient, str]:
    auditor = ServiceProviderClient(
        client_id="auditeur-test",
        signing_key=key,
        gateway_issuer=ISSUER,
        redirect_uri="https://unused.example/cb",
        http=stack.http,
    )
    response = await stack.http.post(
        f"{ISSUER}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "audit:read",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": auditor.client_assertion(),
        },
        headers={"DPoP": auditor.dpop_proof("POST", f"{ISSUER}/oauth/token")},
    )
    assert response.status_code == 200, response.text
    return auditor, response.json()["access_token"]


# --------------------------------------------------------------------------- helpers


async def audit_get(
    stack: Stack,
    auditor: ServiceProviderClient,
    token: str,
    path: str,
    params: dict[str, str] | None = None,
    *,
    proof: str | None = None,
) -> httpx.Response:
    """A GET on an audit route with the auditor's token and a fresh DPoP proof."""
    url = f"{ISSUER}{path}"
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": proof or auditor.dpop_proof("GET", url, access_token=token),
    }
    return await stack.http.get(url, params=params or {}, headers=headers)


def problem_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    kind = response.json()["type"]
    assert kind.startswith("urn:gateway:error:")
    return str(kind.removeprefix("urn:gateway:error:"))


async def _story_ids(stack: Stack, persona: str = "marianne") -> tuple[str, str]:
    """A consent granted and used once: (consent id, transfer id).

    Marianne's data comes from the CNAF, Jean's from the DGFiP (the demo
    providers know them there).
    """
    if persona == "jean":
        grant = await stack.grant([dgfip_details()], persona=persona)
        response = await stack.sp.fetch(
            "dgfip", "revenu_fiscal", grant.access_token, params={"annee": "2024"}
        )
    else:
        grant = await stack.grant([cnaf_details()], persona=persona)
        response = await stack.sp.fetch(
            "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
        )
    assert response.status_code == 200, response.text
    return grant.consent_id, response.headers["transfer-id"]


def _time(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))


async def _accessed_last(stack: Stack, endpoint: str) -> dict[str, object]:
    last = (await stack.trail())[-1]
    assert last["type"] == "audit.accessed"
    assert last["client_id"] == "auditeur-test"
    details = last["details"]
    assert isinstance(details, dict) and details["endpoint"] == endpoint
    return last


async def _signed(stack: Stack) -> Checkpoint:
    await stack.rt.checkpointer.sign_if_grown(stack.rt.now())
    note = (await stack.http.get(f"{ISSUER}/trail/checkpoint")).text
    key = (await stack.http.get(f"{ISSUER}/trail/verifier-key")).text.strip()
    return open_checkpoint(note, Verifier.from_key(key))


# --------------------------------------------------------------------------- auditor access


async def test_auditor_token_by_client_credentials(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    auditor, token = await auditor_token(stack, key)
    assert token.count(".") == 2
    issued = [e for e in await stack.trail() if e["type"] == "token.issued"]
    assert issued[-1]["client_id"] == "auditeur-test"
    assert issued[-1]["details"]["scope"] == "audit:read"
    response = await audit_get(stack, auditor, token, "/audit/events")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"


async def test_audit_events_filters(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    consent_1, transfer_1 = await _story_ids(stack)
    consent_2, transfer_2 = await _story_ids(stack, persona="jean")
    auditor, token = await auditor_token(stack, key)

    async def matches(params: dict[str, str], keep: Callable[[dict[str, object]], bool]) -> None:
        expected = [i for i, e in enumerate(await stack.trail()) if keep(e)]
        response = await audit_get(
            stack, auditor, token, "/audit/events", {**params, "limit": "1000"}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["next_cursor"] is None
        got = [e["index"] for e in page["events"]]
        assert got == expected, params
        assert got, f"filter {params} should match something"
        await _accessed_last(stack, "events")

    await matches({"type": "transfer.completed"}, lambda e: e["type"] == "transfer.completed")
    await matches(
        {"client_id": "mairie-demoville"}, lambda e: e.get("client_id") == "mairie-demoville"
    )
    await matches({"client_id": "auditeur-test"}, lambda e: e.get("client_id") == "auditeur-test")
    await matches({"provider": "cnaf"}, lambda e: e.get("provider") == "cnaf")
    await matches({"consent_id": consent_2}, lambda e: e.get("consent_id") == consent_2)
    await matches({"transfer_id": transfer_1}, lambda e: e.get("transfer_id") == transfer_1)
    await matches(
        {"type": "consent.granted", "consent_id": consent_1},
        lambda e: e["type"] == "consent.granted" and e.get("consent_id") == consent_1,
    )
    assert transfer_2 != transfer_1

    # Time range: since is inclusive, until exclusive, at an entry's exact time.
    trail = await stack.trail()
    middle = trail[len(trail) // 2]
    moment, at = str(middle["time"]), _time(middle)
    await matches({"since": moment}, lambda e: _time(e) >= at)
    await matches({"until": moment}, lambda e: _time(e) < at)
    start = str(trail[2]["time"])
    await matches({"since": start, "until": moment}, lambda e: _time(trail[2]) <= _time(e) < at)
    offset = at.astimezone(timezone(timedelta(hours=2))).isoformat()  # same instant, +02:00
    await matches({"since": offset}, lambda e: _time(e) >= at)

    for bad in (
        {"since": "yesterday"},
        {"until": "2026-01-01T00:00:00"},
        {"limit": "x"},
        {"limit": "0"},
        {"cursor": "-1"},
        {"cursor": "²"},
        {"cursor": "9" * 30},
    ):
        response = await audit_get(stack, auditor, token, "/audit/events", bad)
        assert response.status_code == 400, bad
        assert problem_code(response) == "invalid_parameter"


async def test_audit_events_cursor_pagination(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    await _story_ids(stack)
    auditor, token = await auditor_token(stack, key)
    before = len(await stack.trail())

    async def walk(params: dict[str, str]) -> tuple[list[int], int]:
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            query = {**params, "limit": "2"} | ({"cursor": cursor} if cursor else {})
            response = await audit_get(stack, auditor, token, "/audit/events", query)
            assert response.status_code == 200, response.text
            page = response.json()
            cursor = page["next_cursor"]
            # Full pages until the last, which holds what is left (never nothing).
            assert len(page["events"]) == 2 if cursor is not None else len(page["events"]) in (1, 2)
            seen += [e["index"] for e in page["events"]]
            pages += 1
            if cursor is None:
                return seen, pages
            assert cursor == str(seen[-1])

    # Unfiltered: every query appends audit.accessed, which later pages return too;
    # the walk still ends and sees every index exactly once.
    seen, pages = await walk({})
    assert seen == list(range(len(seen)))
    assert len(seen) >= before
    assert pages >= before // 2
    # Filtered on the service provider: exactly what the trail holds for it.
    expected = [
        i for i, e in enumerate(await stack.trail()) if e.get("client_id") == "mairie-demoville"
    ]
    seen, pages = await walk({"client_id": "mairie-demoville"})
    assert seen == expected
    assert pages == (len(expected) + 1) // 2
    await _accessed_last(stack, "events")


async def test_audit_export_verifies_offline(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    await _story_ids(stack)
    old = await _signed(stack)
    await _story_ids(stack, persona="jean")
    auditor, token = await auditor_token(stack, key)
    response = await audit_get(stack, auditor, token, "/audit/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    await _accessed_last(stack, "export")  # appended before the stream started
    async with stack.rt.engine.connect() as conn:
        stored = await Trail.read(conn)
    assert len(lines) == len(stored)
    for line, row in zip(lines, stored, strict=True):
        record = json.loads(line)
        assert set(record) == {"index", "entry", "leaf_hash"}
        assert record["index"] == row.index
        assert base64.b64decode(record["entry"]) == row.entry  # the exact bytes
        leaf = base64.b64decode(record["leaf_hash"])
        assert leaf == row.leaf_hash == hashlib.sha256(b"\x00" + row.entry).digest()
    checkpoint = await _signed(stack)
    assert checkpoint.size == len(lines)
    report = verify_export(lines, checkpoint, old=old)
    assert (report.entries, report.size, report.root) == (
        len(lines),
        checkpoint.size,
        checkpoint.root,
    )
    assert report.old_size == old.size < checkpoint.size
    # A filtered export holds only what matches.
    response = await audit_get(stack, auditor, token, "/audit/export", {"type": "consent.granted"})
    records = [json.loads(line) for line in response.text.splitlines()]
    assert len(records) == 2
    assert all(b"consent.granted" in base64.b64decode(r["entry"]) for r in records)


async def test_every_audit_query_is_trailed(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    auditor, token = await auditor_token(stack, key)
    for path, endpoint in (
        ("/audit/events", "events"),
        ("/audit/export", "export"),
        ("/trail/entries/0", "entries"),
    ):
        count = len(await stack.trail())
        response = await audit_get(stack, auditor, token, path, {"type": "policy.loaded"})
        assert response.status_code == 200, response.text
        trail = await stack.trail()
        assert len(trail) == count + 1
        last = await _accessed_last(stack, endpoint)
        assert "subject" not in last
    details = last["details"]
    assert isinstance(details, dict) and details["query"] == {"index": 0}


async def test_audit_routes_refuse_others(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    grant = await stack.grant([cnaf_details()])
    url = f"{ISSUER}/audit/events"
    # The service provider's consent token: authenticated, but not an auditor.
    for path in ("/audit/events", "/audit/export", "/trail/entries/0"):
        response = await stack.http.get(
            f"{ISSUER}{path}",
            headers={
                "Authorization": f"DPoP {grant.access_token}",
                "DPoP": stack.sp.dpop_proof(
                    "GET", f"{ISSUER}{path}", access_token=grant.access_token
                ),
            },
        )
        assert response.status_code == 403, path
        assert problem_code(response) == "auditor_only"
    # No token at all.
    for path in ("/audit/events", "/audit/export"):
        response = await stack.http.get(f"{ISSUER}{path}")
        assert response.status_code == 401
        assert problem_code(response) == "token_missing"
        assert response.headers["www-authenticate"].startswith("DPoP ")
    # A bearer-looking header without a proof.
    auditor, token = await auditor_token(stack, key)
    response = await stack.http.get(url, headers={"Authorization": f"DPoP {token}"})
    assert response.status_code == 401
    # A proof for another URL.
    response = await audit_get(
        stack,
        auditor,
        token,
        "/audit/events",
        proof=auditor.dpop_proof("GET", f"{ISSUER}/audit/export", access_token=token),
    )
    assert response.status_code == 401
    # The right token with a proof from another key: not bound to it.
    other = ServiceProviderClient(
        client_id="auditeur-test",
        signing_key=key,
        gateway_issuer=ISSUER,
        redirect_uri="https://unused.example/cb",
        http=stack.http,
    )
    response = await audit_get(
        stack,
        auditor,
        token,
        "/audit/events",
        proof=other.dpop_proof("GET", url, access_token=token),
    )
    assert response.status_code == 401
    # Nothing was trailed as audit.accessed by any refusal.
    assert "audit.accessed" not in await stack.trail_types()


async def test_audit_dpop_proof_is_single_use(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    auditor, token = await auditor_token(stack, key)
    proof = auditor.dpop_proof("GET", f"{ISSUER}/audit/events", access_token=token)
    first = await audit_get(stack, auditor, token, "/audit/events", proof=proof)
    assert first.status_code == 200, first.text
    again = await audit_get(stack, auditor, token, "/audit/events", proof=proof)
    assert again.status_code == 401
    assert problem_code(again) == "dpop_proof_replayed"
    assert (await stack.trail_types()).count("audit.accessed") == 1


async def _token_request(
    stack: Stack, client: ServiceProviderClient, **form: str
) -> httpx.Response:
    return await stack.http.post(
        f"{ISSUER}/oauth/token",
        data={
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client.client_assertion(),
            **form,
        },
        headers={"DPoP": client.dpop_proof("POST", f"{ISSUER}/oauth/token")},
    )


async def test_client_credentials_only_for_auditors_and_audit_scope(
    audit_stack: tuple[Stack, SigningKey],
) -> None:
    stack, key = audit_stack
    response = await _token_request(
        stack, stack.sp, grant_type="client_credentials", scope="audit:read"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"
    auditor = ServiceProviderClient(
        client_id="auditeur-test",
        signing_key=key,
        gateway_issuer=ISSUER,
        redirect_uri="https://unused.example/cb",
        http=stack.http,
    )
    for scope in ("audit:write", "audit:read openid", "", "AUDIT:READ"):
        form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
        response = await _token_request(stack, auditor, **form)
        assert response.status_code == 400, scope
        assert response.json()["error"] == "invalid_scope", scope
    # An auditor cannot redeem authorization codes either.
    response = await _token_request(
        stack,
        auditor,
        grant_type="authorization_code",
        code="x",
        code_verifier="y" * 43,
        redirect_uri="https://unused.example/cb",
    )
    assert response.json()["error"] == "unauthorized_client"
    refused = [e for e in await stack.trail() if e["type"] == "request.refused"]
    assert len(refused) == 6
    assert "token.issued" not in await stack.trail_types()


async def test_audit_token_is_refused_at_data(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    provider = count_calls(stack, CNAF)
    auditor, token = await auditor_token(stack, key)
    response = await auditor.fetch(
        "cnaf", "quotient_familial", token, params={"annee": "2025", "mois": "01"}
    )
    assert response.status_code == 401
    assert problem_code(response) == "token_invalid"
    assert provider.calls == 0
    assert "transfer.authorized" not in await stack.trail_types()


async def test_trail_entries_for_auditor_and_person(audit_stack: tuple[Stack, SigningKey]) -> None:
    stack, key = audit_stack
    marianne = stack.browser()
    await stack.grant([cnaf_details()], browser=marianne)
    jean = stack.browser()
    await stack.grant([cnaf_details()], persona="jean", browser=jean)
    auditor, token = await auditor_token(stack, key)
    trail = await stack.trail()
    # The auditor: any entry, with its exact bytes and leaf hash.
    async with stack.rt.engine.connect() as conn:
        stored = await Trail.read(conn)
    for row in stored:
        response = await audit_get(stack, auditor, token, f"/trail/entries/{row.index}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["index"] == row.index
        assert base64.b64decode(body["entry"]) == row.entry
        assert base64.b64decode(body["leaf_hash"]) == row.leaf_hash
        assert body["event"] == trail[row.index]
    for raw in ("100000", "9" * 30, "²"):
        response = await audit_get(stack, auditor, token, f"/trail/entries/{raw}")
        assert response.status_code == 404
    # The person: their own entries, and nobody else's (indistinguishable from missing).
    granted = [e for e in trail if e["type"] == "consent.granted"]
    subject_m, subject_j = granted[0]["subject"], granted[1]["subject"]
    assert {e.get("subject") for e in trail} - {None} == {subject_m, subject_j}
    mine_m = [i for i, e in enumerate(trail) if e.get("subject") == subject_m]
    mine_j = [i for i, e in enumerate(trail) if e.get("subject") == subject_j]
    assert mine_m and mine_j
    for i in range(len(trail)):
        response = await marianne.get(f"{ISSUER}/trail/entries/{i}")
        if i in mine_m:
            assert response.status_code == 200, (i, response.text)
            assert response.json()["event"] == trail[i]
        else:
            assert response.status_code == 404, (i, trail[i])
            assert problem_code(response) == "entry_not_found"
        response = await jean.get(f"{ISSUER}/trail/entries/{i}")
        assert response.status_code == (200 if i in mine_j else 404), i
    for raw in ("100000", "-1", "abc", "²", "9" * 30):
        response = await marianne.get(f"{ISSUER}/trail/entries/{raw}")
        assert response.status_code == 404
    # Nobody: a login is required.
    response = await stack.http.get(f"{ISSUER}/trail/entries/0")
    assert response.status_code == 401
    assert problem_code(response) == "login_required"


# --------------------------------------------------------------------------- proofs


async def test_proof_endpoints_refuse_bad_parameters(stack: Stack) -> None:
    await _story(stack)
    size = len(await stack.trail())
    bad_inclusion = [
        {"index": str(size), "size": str(size)},  # index >= size
        {"index": "3", "size": "3"},
        {"index": "0", "size": str(size + 1)},  # beyond the tree
        {"index": "0", "size": "0"},
        {"index": "-1", "size": "2"},
        {"index": "a", "size": "2"},
        {"index": "1.0", "size": "2"},
        {"index": "0", "size": "2e1"},
        {"index": "0x1", "size": "2"},
        {"index": " 1", "size": "2"},
        {"index": "²", "size": "2"},  # a digit to str.isdigit, not to int()
        {"index": "0", "size": "٣"},  # an Arabic-Indic three
        {"index": "0", "size": "9" * 30},  # beyond any BIGINT
        {"index": "9" * 30, "size": "2"},
        {"size": "2"},
        {"index": "0"},
        {},
    ]
    for params in bad_inclusion:
        response = await stack.http.get(f"{ISSUER}/trail/proof/inclusion", params=params)
        assert response.status_code == 400, params
        assert problem_code(response) == "invalid_parameter"
    bad_consistency = [
        {"old": "3", "new": "2"},  # old > new
        {"old": "1", "new": str(size + 1)},  # beyond the tree
        {"old": "0", "new": "2"},
        {"old": "x", "new": "2"},
        {"old": "1", "new": "-2"},
        {"old": "1", "new": "2.5"},
        {"old": "²", "new": "2"},
        {"old": "1", "new": "9" * 30},
        {"old": "1"},
        {"new": "2"},
    ]
    for params in bad_consistency:
        response = await stack.http.get(f"{ISSUER}/trail/proof/consistency", params=params)
        assert response.status_code == 400, params
        assert problem_code(response) == "invalid_parameter"


async def test_every_inclusion_proof_verifies_at_several_sizes(stack: Stack) -> None:
    for _ in range(3):
        await _story(stack)
    async with stack.rt.engine.connect() as conn:
        entries = await Trail.read(conn)
        n = len(entries)
        sizes = sorted({1, 2, 3, 4, 5, 7, 8, 9, n // 2, n - 1, n})
        roots = {size: await trail_tree.root_at(conn, size) for size in sizes}
    assert n >= 16
    for size in sizes:
        for e in entries[:size]:
            answer = await stack.http.get(
                f"{ISSUER}/trail/proof/inclusion", params={"index": e.index, "size": size}
            )
            assert answer.status_code == 200, answer.text
            proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
            merkle.verify_inclusion(proof, size, roots[size], e.index, e.leaf_hash)
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(
                    proof, size, roots[size], e.index, hashlib.sha256(b"x").digest()
                )


async def test_consistency_between_every_pair_of_checkpoints(stack: Stack) -> None:
    key = (await stack.http.get(f"{ISSUER}/trail/verifier-key")).text.strip()
    verifier = Verifier.from_key(key)
    notes: list[str] = []
    for round_ in range(4):
        await _story(stack)
        if round_ % 2:
            await stack.grant([cnaf_details()], persona="jean")
        assert await stack.rt.checkpointer.sign_if_grown(stack.rt.now()) is not None
        notes.append((await stack.http.get(f"{ISSUER}/trail/checkpoint")).text)
    assert await stack.rt.checkpointer.sign_if_grown(stack.rt.now()) is None  # not grown
    checkpoints = [open_checkpoint(n, verifier) for n in notes]
    assert [c.size for c in checkpoints] == sorted({c.size for c in checkpoints})
    async with stack.rt.engine.connect() as conn:
        for c in checkpoints:
            assert await trail_tree.root_at(conn, c.size) == c.root
    for old in checkpoints:
        for new in checkpoints:
            if old.size > new.size:
                continue
            answer = await stack.http.get(
                f"{ISSUER}/trail/proof/consistency", params={"old": old.size, "new": new.size}
            )
            assert answer.status_code == 200, answer.text
            proof = [base64.b64decode(h) for h in answer.json()["hashes"]]
            merkle.verify_consistency(proof, old.size, old.root, new.size, new.root)
            if old.size < new.size:
                with pytest.raises(merkle.ProofError):
                    merkle.verify_consistency(proof, old.size, new.root, new.size, new.root)
