"""Fixtures of the browser tests: the real ``gateway demo`` and a real Chromium.

``gateway demo`` runs as a subprocess, in its own temporary directory and data
dir, exactly as a person would start it; it listens on the fixed ports of the
example policies (gateway :8080, demo service provider :8090, providers
:8091/:8092). Chromium is Debian's (``apt-get install chromium``), driven by
Playwright for Python without any browser download.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
GATEWAY = "http://127.0.0.1:8080"
SP = "http://127.0.0.1:8090"
DEMO_PORTS = (8080, 8090, 8091, 8092)
# The machine may have no network: Chromium must not try to reach anything on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_SECONDS = 60.0
# `gateway demo` with the interpreter running the tests (the console script may not be on PATH).
DEMO_COMMAND = "from gateway.cli import main; raise SystemExit(main(['demo']))"


def _busy_ports() -> list[int]:
    busy = []
    for port in DEMO_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``gateway demo`` in a fresh directory; yields its log file."""
    busy = _busy_ports()
    if busy:
        message = f"the demo's fixed ports {busy} on 127.0.0.1 are busy"
        if os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("gateway-demo")
    log_path = workdir / "demo.log"
    # Nothing of the caller's gateway configuration (e.g. a PostgreSQL URL) leaks in:
    # the demo runs on its own SQLite database, as from a fresh clone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_POLICIES": str(REPO / "policies"),
        "GATEWAY_DATA_DIR": str(workdir / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-c", DEMO_COMMAND]
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_up(process, log_path)
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_up(process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"gateway demo exited with {process.returncode}:\n{_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if (
                    http.get(f"{GATEWAY}/healthz").status_code == 200
                    and http.get(f"{SP}/").status_code == 200
                ):
                    return
            time.sleep(0.2)
    pytest.fail(f"gateway demo did not answer within {STARTUP_SECONDS:.0f} s:\n{_tail(log_path)}")


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Screenshots:
    """Saves every page as ``test-artifacts/browser/<lang>/<nn>-<name>.png``."""

    directory: Path
    count: int = 0

    @classmethod
    def fresh(cls, lang: str) -> Screenshots:
        directory = ARTIFACTS / lang
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.png"):
            old.unlink()
        return cls(directory)

    async def take(self, page: Page, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def screenshots() -> Callable[[str], Screenshots]:
    """``screenshots(lang)``: an empty ``test-artifacts/browser/<lang>/`` to fill."""
    return Screenshots.fresh
