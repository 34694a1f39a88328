"""Interop: Go's own sumdb/note and sumdb/tlog accept our checkpoints and proofs.

``tests/trail/go/`` holds ``trailcheck``, a small Go program that opens
checkpoint notes with ``note.Open`` / ``note.NewVerifier`` and checks proofs
with ``tlog.CheckRecord`` / ``tlog.CheckTree`` (golang.org/x/mod/sumdb); it
also rebuilds Go's stored-hash table and proofs from the entries so that we
can compare them with ours, and signs with ``note.NewSigner`` on request.

Offline build: the program is a Go module whose ``go.mod`` requires
golang.org/x/mod and replaces it with the Debian source tree installed by
``golang-golang-x-mod-dev`` (``/usr/share/gocode/src/golang.org/x/mod``; set
``GATEWAY_GO_X_MOD_DIR`` for another copy). The test copies the module to a
temporary directory, so the build never writes into the repository, and runs
``go build`` with ``GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local``
and a private ``GOCACHE``/``GOPATH``: no network and no module cache are used
(a replaced module needs no go.sum entry). Install with
``apt-get install golang-go golang-golang-x-mod-dev``; without them the tests
are skipped (or fail, when ``GATEWAY_REQUIRE_GO=1`` as in CI), and they are
marked ``go``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from base64 import b64decode, b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.trail.checkpoint import Checkpoint, sign_checkpoint
from gateway.trail.entry import encode_entry
from gateway.trail.merkle import MemoryTree, leaf_hash
from gateway.trail.note import Signer, format_private_key_string, parse_private_key_string

pytestmark = pytest.mark.go

GO_SOURCE = Path(__file__).parent / "go"
X_MOD_DIR = Path(os.environ.get("GATEWAY_GO_X_MOD_DIR", "/usr/share/gocode/src/golang.org/x/mod"))
ORIGIN = "gateway.example/trail"
SIZES = [1, 2, 3, 7, 8, 9, 137, 255, 256, 300]

Run = Callable[[dict[str, Any]], subprocess.CompletedProcess[str]]


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOENV="off",
        GOFLAGS="-mod=mod",
        GOPROXY="off",
        GOSUMDB="off",
        GOTOOLCHAIN="local",
        GOCACHE=str(work / "cache"),
        GOPATH=str(work / "gopath"),
        CGO_ENABLED="0",
    )
    return env


def _unavailable(reason: str) -> NoReturn:
    # CI sets GATEWAY_REQUIRE_GO=1 so that a broken install fails instead of skipping.
    if os.environ.get("GATEWAY_REQUIRE_GO") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def trailcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        _unavailable("Go toolchain not installed (apt-get install golang-go)")
    if not (X_MOD_DIR / "sumdb" / "tlog" / "tlog.go").is_file():
        _unavailable(
            f"golang.org/x/mod sources not found in {X_MOD_DIR} "
            "(apt-get install golang-golang-x-mod-dev, or set GATEWAY_GO_X_MOD_DIR)"
        )
    work = tmp_path_factory.mktemp("trailcheck")
    module = work / "src"
    shutil.copytree(GO_SOURCE, module)
    env = _go_env(work)
    subprocess.run(  # noqa: S603 (the go tool found on PATH, fixed arguments)
        [go, "mod", "edit", f"-replace=golang.org/x/mod={X_MOD_DIR}"],
        cwd=module,
        env=env,
        check=True,
        timeout=120,
    )
    binary = work / "trailcheck"
    build = subprocess.run(  # noqa: S603 (the go tool found on PATH, fixed arguments)
        [go, "build", "-o", str(binary), "."],
        cwd=module,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    return binary


@pytest.fixture(scope="module")
def run(trailcheck: Path) -> Run:
    def run(request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (the program this module just built)
            [str(trailcheck)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def enc(data: bytes) -> str:
    return b64encode(data).decode()


ENTRIES = [
    encode_entry({"id": f"event-{i}", "type": "transfer.completed", "size": i})
    for i in range(max(SIZES))
]
TREE = MemoryTree(ENTRIES)
SIGNER = Signer(ORIGIN, Ed25519PrivateKey.generate())
NOTES = [sign_checkpoint(Checkpoint(ORIGIN, size, TREE.root(size)), SIGNER) for size in SIZES]


def inclusion_checks() -> list[dict[str, Any]]:
    checks = []
    for at, size in enumerate(SIZES):
        for index in sorted({0, 1, size // 2, size - 2, size - 1} & set(range(size))):
            checks.append(
                {
                    "checkpoint": at,
                    "index": index,
                    "entry": enc(ENTRIES[index]),
                    "proof": [enc(h) for h in TREE.inclusion(index, size)],
                }
            )
    return checks


def consistency_checks() -> list[dict[str, Any]]:
    pairs = [(i, i + 1) for i in range(len(SIZES) - 1)] + [(0, len(SIZES) - 1), (3, 8), (5, 5)]
    return [
        {
            "old": old,
            "new": new,
            "proof": [enc(h) for h in TREE.consistency(SIZES[old], SIZES[new])],
        }
        for old, new in pairs
    ]


def request(**changes: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "vkey": SIGNER.verifier_key(),
        "notes": NOTES,
        "inclusion": inclusion_checks(),
        "consistency": consistency_checks(),
    }
    req.update(changes)
    return req


def test_go_accepts_our_checkpoints_and_proofs(run: Run) -> None:
    result = run(request())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(c["origin"], c["size"]) for c in report["checkpoints"]] == [
        (ORIGIN, size) for size in SIZES
    ]


def test_go_computes_the_same_stored_hashes_and_proofs(run: Run) -> None:
    result = run(request(entries=[enc(e) for e in ENTRIES]))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Same table, index for index: Go's StoredHashIndex layout is ours.
    assert [b64decode(h) for h in report["stored_hashes"]] == list(TREE.stored_hashes)
    ours_inclusion = [check["proof"] for check in inclusion_checks()]
    assert [[h for h in p] for p in report["record_proofs"]] == ours_inclusion
    ours_consistency = [check["proof"] for check in consistency_checks()]
    assert report["tree_proofs"] == ours_consistency
    assert leaf_hash(ENTRIES[0]) == TREE.leaf_hash(0)


def test_go_signs_exactly_as_we_do(run: Run) -> None:
    body = Checkpoint(ORIGIN, 300, TREE.root()).body()
    skey = format_private_key_string(ORIGIN, SIGNER._private_key)
    result = run(request(notes=[], inclusion=[], consistency=[], sign={"skey": skey, "text": body}))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["signed"] == NOTES[-1]
    assert parse_private_key_string(skey).verifier_key() == SIGNER.verifier_key()


def flip_first_bit(b64: str) -> str:
    raw = b64decode(b64)
    return enc(bytes([raw[0] ^ 0x01]) + raw[1:])


def tampered_inclusion() -> list[dict[str, Any]]:
    checks = inclusion_checks()
    checks[-1]["proof"][2] = flip_first_bit(checks[-1]["proof"][2])
    return checks


def wrong_index() -> list[dict[str, Any]]:
    checks = inclusion_checks()
    checks[-1]["index"] -= 1
    return checks


def wrong_entry() -> list[dict[str, Any]]:
    checks = inclusion_checks()
    checks[-1]["entry"] = enc(ENTRIES[-1] + b" ")
    return checks


def tampered_consistency() -> list[dict[str, Any]]:
    checks = consistency_checks()
    checks[-3]["proof"][0] = flip_first_bit(checks[-3]["proof"][0])
    return checks


def truncated_consistency() -> list[dict[str, Any]]:
    checks = consistency_checks()
    checks[0]["proof"] = checks[1]["proof"]
    return checks


def forked_notes() -> list[str]:
    # The same sizes signed over a different history from entry 200 on: a fork.
    fork = MemoryTree([*ENTRIES[:200], *(e + b"!" for e in ENTRIES[200:])])
    return [sign_checkpoint(Checkpoint(ORIGIN, s, fork.root(s)), SIGNER) for s in SIZES]


def resized_note() -> list[str]:
    notes = list(NOTES)
    notes[-1] = notes[-1].replace("\n300\n", "\n299\n")
    return notes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(lambda: {"inclusion": tampered_inclusion()}, "inclusion", id="inclusion bit"),
        pytest.param(lambda: {"inclusion": wrong_index()}, "inclusion", id="inclusion index"),
        pytest.param(lambda: {"inclusion": wrong_entry()}, "inclusion", id="inclusion entry"),
        pytest.param(
            lambda: {"consistency": tampered_consistency()}, "consistency", id="consistency bit"
        ),
        pytest.param(
            lambda: {"consistency": truncated_consistency()}, "consistency", id="wrong proof"
        ),
        pytest.param(
            lambda: {"notes": NOTES[:6] + forked_notes()[6:], "inclusion": []},
            "consistency",
            id="forked history",
        ),
        pytest.param(lambda: {"notes": resized_note()}, "note 9", id="modified checkpoint"),
        pytest.param(
            lambda: {"vkey": Signer(ORIGIN, Ed25519PrivateKey.generate()).verifier_key()},
            "note 0",
            id="other key",
        ),
    ],
)
def test_go_refuses_tampering(
    run: Run, changes: Callable[[], dict[str, Any]], message: str
) -> None:
    result = run(request(**changes()))
    assert result.returncode != 0
    assert message in result.stderr
