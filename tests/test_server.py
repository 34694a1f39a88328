"""``gateway serve``'s collector tuning: thresholds from the environment, applied after start-up.

The tuning changes the whole interpreter's collector, so everything that
applies it runs in a child interpreter, never in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from gateway.settings import GC_THRESHOLDS, Settings, SettingsError

DEMO = {"GATEWAY_DEMO": "1"}


def test_thresholds_default_without_the_variable() -> None:
    assert Settings.from_env(DEMO).gc_thresholds == GC_THRESHOLDS
    assert Settings.from_env(DEMO | {"GATEWAY_GC_THRESHOLDS": "  "}).gc_thresholds == GC_THRESHOLDS


def test_thresholds_from_the_variable() -> None:
    assert Settings.from_env(DEMO | {"GATEWAY_GC_THRESHOLDS": "700,10,10"}).gc_thresholds == (
        700,
        10,
        10,
    )
    assert Settings.from_env(DEMO | {"GATEWAY_GC_THRESHOLDS": " 5000, 0, 3 "}).gc_thresholds == (
        5000,
        0,
        3,
    )


@pytest.mark.parametrize("raw", ["20000", "a,b,c", "1,2,3,4", "0,10,10", "100,-1,10"])
def test_bad_thresholds_are_a_readable_configuration_error(raw: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_GC_THRESHOLDS"):
        Settings.from_env(DEMO | {"GATEWAY_GC_THRESHOLDS": raw})


def _child(code: str) -> dict[str, object]:
    done = subprocess.run(  # noqa: S603 (our interpreter, our code)
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_server_tunes_the_collector_once_the_app_has_started() -> None:
    # A real uvicorn start-up of an app whose lifespan records the collector's
    # state: untouched while the app starts, tuned right after.
    result = _child(
        """
        import asyncio, gc, json, socket
        import uvicorn
        from gateway.server import _Server

        seen = {"initial": list(gc.get_threshold())}

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                message = await receive()
                seen["during_startup"] = list(gc.get_threshold())
                await send({"type": "lifespan.startup.complete"})
                await receive()
                await send({"type": "lifespan.shutdown.complete"})

        async def main():
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            config = uvicorn.Config(app, lifespan="on", log_level="warning")
            server = _Server(config, (12345, 7, 8))
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            seen["after_startup"] = list(gc.get_threshold())
            seen["frozen"] = gc.get_freeze_count()
            server.should_exit = True
            await serving

        asyncio.run(main())
        print(json.dumps(seen))
        """
    )
    assert result["during_startup"] == result["initial"]  # Python's defaults until then
    assert result["after_startup"] == [12345, 7, 8]
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000


def test_a_failed_start_up_leaves_the_collector_alone() -> None:
    result = _child(
        """
        import asyncio, gc, json, socket
        import uvicorn
        from gateway.server import _Server

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.failed", "message": "no database"})

        async def main():
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            config = uvicorn.Config(app, lifespan="on", log_level="critical")
            server = _Server(config, (12345, 7, 8))
            try:
                await server.serve(sockets=[sock])
            except SystemExit as stop:  # uvicorn's way out of a failed start-up
                return stop.code
            return None

        initial = list(gc.get_threshold())
        exited = asyncio.run(main())
        after = list(gc.get_threshold())
        print(json.dumps({"exited": exited, "initial": initial, "thresholds": after}))
        """
    )
    assert result["exited"] not in (None, 0)
    assert result["thresholds"] == result["initial"]
