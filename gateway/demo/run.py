"""``gateway demo``: the gateway with example providers, identity provider and client.

One uvicorn server listens on four loopback ports and dispatches by port:
the gateway (``GATEWAY_ISSUER``, default :8080), the demo service provider
(:8090) and the data providers ``dgfip`` (:8091) and ``cnaf`` (:8092), as
declared in the example policies. ``--scripted`` plays the whole story over
real HTTP and exits 0 only if every step behaved as expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.jose import SigningKey
from gateway.settings import Settings

SP_PORT, DGFIP_PORT, CNAF_PORT = 8090, 8091, 8092
SP_BASE = f"http://127.0.0.1:{SP_PORT}"
PERSONA = "marianne"


def demo_client_key(data_dir: Path) -> SigningKey:
    """The demo service provider's private key, generated on first run in the data dir."""
    path = data_dir / "demo-client" / "mairie-demoville.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate_es256()
        path.write_bytes(key.to_pem())
        path.chmod(0o600)
    return SigningKey.from_pem(path.read_bytes())


class PortDispatcher:
    """Routes each connection to the app of the local port it arrived on."""

    def __init__(self, apps: dict[int, ASGIApp], lifespan_app: ASGIApp) -> None:
        self.apps = apps
        self.lifespan_app = lifespan_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan_app(scope, receive, send)
            return
        port = scope["server"][1] if scope.get("server") else None
        app = self.apps.get(port) if port is not None else None
        if app is None:
            raise RuntimeError(f"no demo app on port {port}")
        await app(scope, receive, send)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"gateway demo: port {port} on {host} is busy ({exc.strerror})") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _prepare(settings: Settings) -> None:
    from gateway.storage.engine import create_engine
    from gateway.storage.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.database_url.value)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def run_demo(*, scripted: bool) -> int:
    from gateway.app import create_app
    from gateway.demo.client import DemoServiceProvider
    from gateway.demo.providers import cnaf_app, dgfip_app

    settings = Settings.from_env(None, demo=True)
    if scripted:
        # The story's own lines are the output; the gateway only speaks up on trouble.
        settings = dataclasses.replace(settings, log_level="warning")
    await _prepare(settings)
    issuer = urlsplit(settings.issuer)
    host = issuer.hostname or "127.0.0.1"
    gateway_port = issuer.port or 8080

    http = httpx.AsyncClient(timeout=10.0, follow_redirects=False, trust_env=False)
    gateway = create_app(settings)
    sp = DemoServiceProvider(
        gateway_issuer=settings.issuer,
        base_url=SP_BASE,
        signing_key=demo_client_key(settings.data_dir),
        http=http,
    )
    dispatcher = PortDispatcher(
        {
            gateway_port: gateway,
            SP_PORT: sp.app,
            DGFIP_PORT: dgfip_app(gateway_issuer=settings.issuer, http=http),
            CNAF_PORT: cnaf_app(gateway_issuer=settings.issuer, http=http),
        },
        lifespan_app=gateway,
    )
    sockets = [_listen(host, p) for p in (gateway_port, SP_PORT, DGFIP_PORT, CNAF_PORT)]
    config = uvicorn.Config(
        dispatcher, access_log=False, log_level="warning", lifespan="on", server_header=False
    )
    server = uvicorn.Server(config)
    print(
        "WARNING: demo mode — fictitious personas and a demo identity provider; "
        "never use it with real people.",
        file=sys.stderr,
    )
    try:
        if not scripted:
            print(f"Gateway:           {settings.issuer}   (data in {settings.data_dir})")
            print(
                f"Data providers:    dgfip http://127.0.0.1:{DGFIP_PORT}  cnaf http://127.0.0.1:{CNAF_PORT}"
            )
            print(f"Your data page:    {settings.issuer}/me")
            print(f"\nStart the walk-through in a browser:  {SP_BASE}/\n")
            await server.serve(sockets=sockets)
            return 0
        serving = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started:
            if serving.done():
                return 1
            await asyncio.sleep(0.05)
        try:
            ok = await play_story(settings.issuer, demo_client_key(settings.data_dir), print)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
        return 0 if ok else 1
    finally:
        await http.aclose()


async def play_story(issuer: str, client_key: SigningKey, say: Callable[[str], Any]) -> bool:
    """The scripted story over real HTTP; True when every step behaved as expected."""
    from gateway.demo.client import authorization_details
    from gateway.demo.spclient import Pkce, ServiceProviderClient
    from gateway.demo.story import Browser, query_of, revoke_on_my_page, walk_consent

    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        sp = ServiceProviderClient(
            client_id="mairie-demoville",
            signing_key=client_key,
            gateway_issuer=issuer,
            redirect_uri=f"{SP_BASE}/callback",
            http=http,
        )
        browser = Browser(httpx.AsyncClient(timeout=10.0, trust_env=False), accept_language="en")
        failures: list[str] = []

        def expect(condition: bool, step: str, shown: str = "") -> None:
            mark = "ok  " if condition else "FAIL"
            say(f"[{mark}] {step}{': ' + shown if shown else ''}")
            if not condition:
                failures.append(step)

        async def consent(details: list[dict[str, Any]], label: str) -> tuple[str, Pkce] | None:
            pkce = Pkce.new()
            url = sp.authorization_url(details, state="demo-state", pkce=pkce)
            expect(
                True,
                f"{label}: the town hall asks for consent",
                ", ".join(
                    f"{d['provider']}/{'+'.join(d['resources'])} ×{d['max_transfers']}"
                    for d in details
                ),
            )
            outcome = await walk_consent(
                browser, url, persona=PERSONA, decision="grant", redirect_uri=f"{SP_BASE}/callback"
            )
            page = outcome.consent_page.text
            expect(
                outcome.consent_page.status_code == 200 and "Mairie de Démoville" in page,
                f"{label}: the person logs in (persona '{PERSONA}') and sees the consent page",
            )
            params = query_of(outcome.callback_url)
            expect("code" in params, f"{label}: the person grants; the browser returns with a code")
            if "code" not in params:
                return None
            return ServiceProviderClient.check_callback(
                params, expected_state="demo-state", issuer=issuer
            ), pkce

        async def fetch(
            token: str, provider: str, resource: str, params: dict[str, str]
        ) -> httpx.Response:
            return await sp.fetch(provider, resource, token, params=params)

        # 1. consent asked → login → grant → token
        # Per-transfer consent, the gateway's default: one transfer per provider.
        got = await consent(authorization_details(max_transfers=1), "consent 1")
        if got is None:
            return False
        grant = await sp.exchange_code(*got)
        expect(
            bool(grant.access_token),
            "consent 1: the town hall exchanges the code for a DPoP-bound token",
            f"consent {grant.consent_id}, valid {grant.expires_in} s",
        )

        # 2. transfer → minimised data
        first = await fetch(
            grant.access_token, "cnaf", "quotient_familial", {"annee": "2025", "mois": "01"}
        )
        expect(
            first.status_code == 200,
            "transfer 1: cnaf/quotient_familial relayed and minimised",
            f"{first.json()} (Transfer-Id {first.headers.get('transfer-id')})",
        )
        tax = await fetch(grant.access_token, "dgfip", "revenu_fiscal", {"annee": "2024"})
        expect(
            tax.status_code == 200,
            "transfer 2: dgfip/revenu_fiscal relayed and minimised",
            str(tax.json()),
        )

        # 3. second transfer refused: the consent is used up
        again = await fetch(
            grant.access_token, "cnaf", "quotient_familial", {"annee": "2025", "mois": "01"}
        )
        expect(
            again.status_code == 403 and again.json().get("type", "").endswith("consent_exhausted"),
            "transfer 3: refused, the consent was for one transfer",
            again.json().get("type", ""),
        )

        # 4. a new consent, revoked by the person on their page
        got = await consent([authorization_details(max_transfers=1)[0]], "consent 2")
        if got is None:
            return False
        grant2 = await sp.exchange_code(*got)
        expect(bool(grant2.access_token), "consent 2: new token", f"consent {grant2.consent_id}")
        page = await revoke_on_my_page(browser, f"{issuer}/me", grant2.consent_id)
        expect(page.status_code == 200, "consent 2: the person revokes it on their 'my data' page")

        # 5. the still-unexpired token is refused
        after = await fetch(
            grant2.access_token, "cnaf", "quotient_familial", {"annee": "2025", "mois": "01"}
        )
        expect(
            after.status_code == 403 and after.json().get("type", "").endswith("consent_revoked"),
            "transfer 4: refused after revocation",
            after.json().get("type", ""),
        )
        await browser.http.aclose()
        say("")
        say("every step behaved as expected" if not failures else f"{len(failures)} step(s) failed")
        return not failures
