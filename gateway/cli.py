"""The ``gateway`` command: serve, demo, db upgrade, keys generate, policy check."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.settings import Settings, SettingsError

if TYPE_CHECKING:
    from gateway.keys import KeyRing


def _settings(*, require_idp: bool = True, **overrides: object) -> Settings:
    try:
        return Settings.from_env(None, require_idp=require_idp, **overrides)
    except SettingsError as exc:
        raise SystemExit(f"gateway: configuration error: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.storage.engine import create_engine
    from gateway.storage.migrate import SchemaBehind, check_schema

    settings = _settings()

    async def schema_ok() -> None:
        if settings.database_url.value.startswith("sqlite"):
            # As `db upgrade` does: a missing data dir is an empty database, which
            # check_schema reports, not a driver traceback.
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.database_url.value)
        try:
            await check_schema(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(schema_ok())
    except SchemaBehind as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if settings.demo:
        print(
            "WARNING: GATEWAY_DEMO=1 — the demo identity provider with fictitious personas is "
            "mounted at /demo-idp. Never use demo mode with real people.",
            file=sys.stderr,
        )
    from gateway.server import serve

    return serve(args.host, args.port, args.workers, gc_thresholds=settings.gc_thresholds)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    return asyncio.run(run_demo(scripted=args.scripted))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gateway.storage.engine import create_engine
    from gateway.storage.migrate import current_revision, upgrade

    settings = _settings(require_idp=False)

    async def run() -> str | None:
        if settings.database_url.value.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.database_url.value)
        try:
            await upgrade(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database schema at revision {asyncio.run(run())}")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from gateway.keys import load_keys

    settings = _settings(require_idp=False)
    ring = load_keys(settings.keys_dir, create=True, demo=settings.demo)
    _print_keys(settings, ring)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from gateway.keys import KeysMissing, load_keys

    settings = _settings(require_idp=False)
    try:
        ring = load_keys(settings.keys_dir, create=False)
    except KeysMissing as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    _print_keys(settings, ring)
    return 0


def _print_keys(settings: Settings, ring: KeyRing) -> None:
    from gateway.trail.note import Signer

    print(f"keys in {settings.keys_dir}")
    for key in ring.signing:
        marker = " (signing)" if key is ring.active else ""
        print(f"  {key.alg} {key.kid}{marker}")
    print("trail checkpoint verifier key (give it to auditors and witnesses):")
    print(f"  {Signer(settings.trail_origin, ring.trail_key).verifier_key()}")


def cmd_trail_verify(args: argparse.Namespace) -> int:
    from gateway.trail.verify import cli_verify

    return cli_verify(
        Path(args.export),
        Path(args.checkpoint),
        args.verifier_key,
        Path(args.old_checkpoint) if args.old_checkpoint else None,
    )


def cmd_trail_watch(args: argparse.Namespace) -> int:
    from gateway.trail.verify import cli_watch

    return asyncio.run(
        cli_watch(
            args.url,
            args.verifier_key,
            Path(args.state),
            interval=args.interval,
            count=args.count,
        )
    )


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    import json

    import httpx

    from gateway.jose import TOKEN_ALGS, public_keys_from_jwks
    from gateway.receipts import ReceiptInvalid, verify_receipt
    from gateway.trail.note import NoteError, Verifier

    try:
        if args.issuer:
            base = args.issuer.rstrip("/")
            jwks = httpx.get(f"{base}/.well-known/jwks.json", timeout=10).json()
            vkey = args.verifier_key or httpx.get(f"{base}/trail/verifier-key", timeout=10).text
        else:
            if not args.jwks:
                print("gateway: give --jwks FILE (or --issuer URL)", file=sys.stderr)
                return 2
            jwks = json.loads(Path(args.jwks).read_text("utf-8"))
            vkey = args.verifier_key
        if vkey and "+" not in vkey and Path(vkey).is_file():
            vkey = Path(vkey).read_text("utf-8")
        verifier = Verifier.from_key(vkey.strip()) if vkey else None
        keys = public_keys_from_jwks(jwks, TOKEN_ALGS)
        token = Path(args.file).read_text("utf-8").strip()
        result = verify_receipt(token, keys, verifier=verifier)
    except (ReceiptInvalid, NoteError, ValueError, OSError, httpx.HTTPError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    record = result.claims["receipt"]
    print(
        f"OK: receipt {result.claims['jti']} for consent {record['consent_id']} "
        f"({record['state']}), signed by the gateway"
    )
    if result.proof_checked:
        print(
            "OK: its consent.granted entry is in the trail "
            f"(checkpoint of {result.checkpoint_size} entries)"
        )
    else:
        print("note: no trail verifier key given: the inclusion proof was not checked")
        return 1
    return 0


def cmd_subject_erase(args: argparse.Namespace) -> int:
    from gateway.erasure import erase_subject

    settings = _settings(require_idp=False)
    found = asyncio.run(erase_subject(settings, args.pseudonym))
    if not found:
        print(f"no person has the trail pseudonym {args.pseudonym!r}", file=sys.stderr)
        return 1
    print(
        "erased: the person's trail secret is deleted; their trail entries stay and stay "
        "provable, but can no longer be linked to them"
    )
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.loader import PolicyError, describe, load_policies

    # Checking policy files logs nobody in: it must work on a reviewer's machine
    # or in CI, where no identity provider is configured.
    settings = _settings(require_idp=False)
    directory = Path(args.directory) if args.directory else settings.policies_dir
    allow_http = settings.demo or args.demo
    try:
        policy = load_policies(directory, allow_http=allow_http)
    except PolicyError as exc:
        print(f"policy error: {exc}", file=sys.stderr)
        return 1
    print(describe(policy, lang=args.lang))
    print(f"policy digest: {policy.digest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Consent-mediated personal data exchange gateway.",
        epilog="Configuration comes from GATEWAY_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the gateway (HTTP server)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo", help="run the gateway with example providers, identity provider and client"
    )
    demo.add_argument(
        "--scripted", action="store_true", help="play the whole story without a browser"
    )
    demo.set_defaults(func=cmd_demo)

    db = sub.add_parser("db", help="database schema: db upgrade")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_sub.add_parser("upgrade", help="apply migrations up to the newest").set_defaults(
        func=cmd_db_upgrade
    )

    keys = sub.add_parser("keys", help="key material: keys generate | keys list")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_sub.add_parser("generate", help="create missing keys and list them").set_defaults(
        func=cmd_keys_generate
    )
    keys_sub.add_parser(
        "list", help="list keys and the trail verifier key, creating nothing"
    ).set_defaults(func=cmd_keys_list)

    trail = sub.add_parser("trail", help="the tamper-evident trail: trail verify | trail watch")
    trail_sub = trail.add_subparsers(dest="trail_command", metavar="ACTION", required=True)
    verify = trail_sub.add_parser(
        "verify", help="check an export offline against a signed checkpoint"
    )
    verify.add_argument("export", metavar="EXPORT", help="NDJSON from /audit/export")
    verify.add_argument("--checkpoint", required=True, help="file with a signed checkpoint")
    verify.add_argument(
        "--verifier-key", required=True, help="the note verifier key (or a file holding it)"
    )
    verify.add_argument("--old-checkpoint", help="an older checkpoint the log must extend")
    verify.set_defaults(func=cmd_trail_verify)
    watch = trail_sub.add_parser(
        "watch", help="fetch checkpoints periodically and alarm on a fork or a rollback"
    )
    watch.add_argument("url", metavar="URL", help="the gateway's base URL")
    watch.add_argument("--verifier-key", required=True, help="the note verifier key or a file")
    watch.add_argument("--state", required=True, help="file keeping the last checkpoint seen")
    watch.add_argument("--interval", type=float, default=60.0, help="seconds between checks")
    watch.add_argument("--count", type=int, help="stop after this many checks (default: never)")
    watch.set_defaults(func=cmd_trail_watch)

    receipt = sub.add_parser("receipt", help="consent receipts: receipt verify")
    receipt_sub = receipt.add_subparsers(dest="receipt_command", metavar="ACTION", required=True)
    rverify = receipt_sub.add_parser(
        "verify", help="check a consent receipt offline against the gateway's published keys"
    )
    rverify.add_argument("file", metavar="FILE", help="the receipt (.jwt) downloaded from /me")
    rverify.add_argument("--jwks", help="the gateway's /.well-known/jwks.json, saved to a file")
    rverify.add_argument("--verifier-key", help="the trail verifier key (or a file holding it)")
    rverify.add_argument("--issuer", help="fetch both from this gateway instead (online)")
    rverify.set_defaults(func=cmd_receipt_verify)

    subject = sub.add_parser("subject", help="a person's pseudonym: subject erase")
    subject_sub = subject.add_subparsers(dest="subject_command", metavar="ACTION", required=True)
    erase = subject_sub.add_parser(
        "erase", help="delete a person's trail secret: their entries become unlinkable"
    )
    erase.add_argument(
        "--pseudonym",
        required=True,
        help="the person's trail pseudonym; write --pseudonym=P, since one may begin with '-'",
    )
    erase.set_defaults(func=cmd_subject_erase)

    policy = sub.add_parser("policy", help="policy files: policy check")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = policy_sub.add_parser(
        "check", help="validate policies and print who may receive what, for which purpose"
    )
    check.add_argument("directory", nargs="?", help="policy directory (default GATEWAY_POLICIES)")
    check.add_argument(
        "--demo", action="store_true", help="allow http:// loopback URLs (as demo mode does)"
    )
    check.add_argument("--lang", choices=["fr", "en"], default="en")
    check.set_defaults(func=cmd_policy_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
