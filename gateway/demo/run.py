"""``gateway demo``: the gateway with example providers, identity provider and client."""

from __future__ import annotations

from pathlib import Path

from gateway.jose import SigningKey


def demo_client_key(data_dir: Path) -> SigningKey:
    """The demo service provider's private key, generated on first run in the data dir."""
    path = data_dir / "demo-client" / "mairie-demoville.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate_es256()
        path.write_bytes(key.to_pem())
        path.chmod(0o600)
    return SigningKey.from_pem(path.read_bytes())


async def run_demo(*, scripted: bool) -> int:
    raise SystemExit("not yet")
