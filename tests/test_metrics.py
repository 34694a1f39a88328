"""``GET /metrics``: the counts, their format, their sum across workers, and who may read them.

The text is parsed with ``prometheus_client``'s own parser, so a format
mistake fails here rather than in an operator's Prometheus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.metrics import Layout, Metrics, MetricsError, Shared
from gateway.settings import Settings
from gateway.storage.engine import create_engine
from tests.conftest import CNAF, ISSUER, Stack, cnaf_details, running_stack

QF_PARAMS = {"annee": "2025", "mois": "01"}
DATA = "/data/{provider}/{resource}"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def private(
    handlers: tuple[str, ...] = ("/a", "/b"), providers: tuple[str, ...] = ("p",)
) -> Metrics:
    metrics.use_shared(None)
    return metrics.create(handlers, providers)


# ------------------------------------------------------------------ the format


def test_counters_and_histograms_render_as_prometheus_text() -> None:
    m = private()
    m.request("/a", 200, 0.003)
    m.request("/a", 201, 0.2)
    m.request("/a", 404, 30.0)  # past the last bucket: only +Inf
    m.request("/nowhere", 500, 0.001)  # not a route: counted as unmatched
    m.transfer("completed")
    m.denial(2)
    m.provider_call("p", "ok", 0.04)
    m.provider_call("unknown-provider", "ok", 0.04)  # not in the layout: not counted
    m.trail_batch(3, 1)
    m.trail_retry()
    text = m.render()
    got = samples(text)

    assert value(text, "gateway_http_requests_total", handler="/a", code="2xx") == 2
    assert value(text, "gateway_http_requests_total", handler="/a", code="4xx") == 1
    assert value(text, "gateway_http_requests_total", handler="unmatched", code="5xx") == 1
    assert value(text, "gateway_http_requests_total", handler="/b", code="2xx") == 0
    # Cumulative buckets: 3 ms falls in every bucket from 5 ms, 0.2 s from 0.25 s.
    bucket = "gateway_http_request_duration_seconds_bucket"
    assert value(text, bucket, handler="/a", le="0.005") == 1
    assert value(text, bucket, handler="/a", le="0.1") == 1
    assert value(text, bucket, handler="/a", le="0.25") == 2
    assert value(text, bucket, handler="/a", le="10.0") == 2
    assert value(text, bucket, handler="/a", le="+Inf") == 3
    assert value(text, "gateway_http_request_duration_seconds_count", handler="/a") == 3
    assert value(text, "gateway_http_request_duration_seconds_sum", handler="/a") == pytest.approx(
        30.203
    )
    assert value(text, "gateway_transfers_total", outcome="completed") == 1
    assert value(text, "gateway_transfers_total", outcome="denied") == 1
    assert value(text, "gateway_transfer_denials_total", check="dpop") == 1
    assert value(text, "gateway_transfer_denials_total", check="token") == 0
    assert value(text, "gateway_provider_requests_total", provider="p", outcome="ok") == 1
    assert not [k for k in got if ("provider", "unknown-provider") in k[1]]
    assert value(text, "gateway_trail_batches_total") == 1
    assert value(text, "gateway_trail_units_total", result="committed") == 3
    assert value(text, "gateway_trail_units_total", result="failed") == 1
    assert value(text, "gateway_trail_batches_retried_total") == 1
    assert value(text, "gateway_metrics_workers") == 1
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["gateway_http_requests"] == "counter"
    assert families["gateway_http_request_duration_seconds"] == "histogram"


def test_label_values_are_escaped() -> None:
    m = private(handlers=('/odd"\\\nname',))
    m.request('/odd"\\\nname', 200, 0.001)
    text = m.render()
    assert value(text, "gateway_http_requests_total", handler='/odd"\\\nname', code="2xx") == 1


def test_gauges_render_with_their_labels() -> None:
    text = private().render(
        [metrics.Gauge("gateway_info", "x", 1, (("version", "1.2"), ("policy_digest", "ab")))]
    )
    assert value(text, "gateway_info", version="1.2", policy_digest="ab") == 1


def test_a_layout_that_does_not_fit_a_row_is_refused() -> None:
    with pytest.raises(MetricsError, match="slots"):
        Layout([f"/r{i}" for i in range(2000)], ())


def test_the_layout_is_the_same_for_the_same_routes_and_providers() -> None:
    one, two = Layout(["/a", "/b"], ["p", "q"]), Layout(["/a", "/b"], ["p", "q"])
    assert one.offsets == two.offsets and one.fingerprint == two.fingerprint
    assert Layout(["/a", "/b"], ["p"]).fingerprint != one.fingerprint


# ------------------------------------------------------- several workers, one map


@pytest.fixture
def shared_file() -> Iterator[str]:
    path = metrics.create_shared_file(3)
    yield path
    metrics.use_shared(None)
    Path(path).unlink()


def attach(path: str, row: int, handlers: tuple[str, ...] = ("/a",)) -> Metrics:
    metrics.use_shared(Shared(path, row, 3))
    return metrics.create(handlers, ("p",))


def test_every_worker_reports_the_sum_of_all_rows(shared_file: str) -> None:
    first, second = attach(shared_file, 0), attach(shared_file, 1)
    for _ in range(3):
        first.request("/a", 200, 0.01)
    second.request("/a", 200, 0.01)
    second.transfer("completed")
    for reader in (first, second):
        text = reader.render()
        assert value(text, "gateway_http_requests_total", handler="/a", code="2xx") == 4
        assert value(text, "gateway_transfers_total", outcome="completed") == 1
        # Row 2 was never taken: two workers are summed.
        assert value(text, "gateway_metrics_workers") == 2


def test_a_restarted_worker_keeps_its_rows_counts(shared_file: str) -> None:
    attach(shared_file, 0).transfer("completed")
    again = attach(shared_file, 0)  # a new process on the same row
    again.transfer("completed")
    assert again.value("gateway_transfers_total", "completed") == 2


def test_a_row_of_another_layout_is_left_out_of_the_sum(shared_file: str) -> None:
    other = attach(shared_file, 0, handlers=("/a", "/other"))
    other.transfer("completed")
    mine = attach(shared_file, 1)
    mine.transfer("completed")
    text = mine.render()
    assert value(text, "gateway_transfers_total", outcome="completed") == 1
    assert value(text, "gateway_metrics_workers") == 1


# ------------------------------------------------------------- the running gateway


async def get_metrics(stack: Stack, **headers: str) -> httpx.Response:
    return await stack.http.get(f"{ISSUER}/metrics", headers=headers)


async def test_transfers_and_requests_are_counted_without_identifiers(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    done = await stack.sp.fetch("cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS)
    assert done.status_code == 200, done.text
    refused = await stack.http.get(f"{ISSUER}/data/cnaf/quotient_familial", params=QF_PARAMS)
    assert refused.status_code == 401
    used_up = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
    )
    assert used_up.status_code == 403
    missing = await stack.http.get(f"{ISSUER}/no/such/page")
    assert missing.status_code == 404

    response = await get_metrics(stack)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    assert value(text, "gateway_transfers_total", outcome="completed") == 1
    assert value(text, "gateway_transfers_total", outcome="denied") == 2
    assert value(text, "gateway_transfer_denials_total", check="token") == 1
    assert value(text, "gateway_transfer_denials_total", check="consent") == 1
    assert value(text, "gateway_provider_requests_total", provider="cnaf", outcome="ok") == 1
    assert value(text, "gateway_http_requests_total", handler=DATA, code="2xx") == 1
    assert value(text, "gateway_http_requests_total", handler=DATA, code="4xx") == 2
    assert value(text, "gateway_http_requests_total", handler="/oauth/token", code="2xx") == 1
    assert value(text, "gateway_http_requests_total", handler="unmatched", code="4xx") == 1
    assert value(text, "gateway_http_request_duration_seconds_count", handler=DATA) == 3
    assert value(text, "gateway_trail_batches_total") >= 1
    assert value(text, "gateway_database_up") == 1
    assert value(text, "gateway_trail_size") == len(await stack.trail())
    assert (
        value(text, "gateway_info", version=metrics_version(), policy_digest=stack.rt.policy.digest)
        == 1
    )
    # Counts only: no consent, transfer, client or person appears.
    for identifier in (grant.consent_id, done.headers["Transfer-Id"], "Marianne", "mairie"):
        assert identifier not in text


def metrics_version() -> str:
    from gateway import __version__

    return __version__


async def test_provider_outcomes_are_counted(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details(max_transfers=1)])
    stack.transport.route(CNAF, None)  # nothing listening
    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params=QF_PARAMS
    )
    assert response.status_code == 502
    text = (await get_metrics(stack)).text
    assert (
        value(
            text, "gateway_provider_requests_total", provider="cnaf", outcome="provider_unavailable"
        )
        == 1
    )
    assert value(text, "gateway_transfers_total", outcome="provider_failed") == 1
    assert value(text, "gateway_provider_request_duration_seconds_count", provider="cnaf") == 1


async def test_checkpoint_gauges_follow_the_signed_checkpoints(stack: Stack) -> None:
    before = samples((await get_metrics(stack)).text)
    assert ("gateway_trail_checkpoint_size", ()) not in before  # none signed yet
    size = await stack.rt.checkpointer.sign_if_grown(stack.rt.now())
    assert size
    stack.clock.advance(seconds=42)
    text = (await get_metrics(stack)).text
    assert value(text, "gateway_trail_checkpoint_size") == size
    assert value(text, "gateway_trail_checkpoint_age_seconds") == pytest.approx(42, abs=1)


async def test_a_database_that_does_not_answer_is_reported_not_raised(
    stack: Stack, tmp_path: Path
) -> None:
    real = stack.rt.engine
    # A database file in a directory that does not exist: every connect fails.
    stack.rt.engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'gateway.db'}")
    try:
        response = await get_metrics(stack)
        ready = await stack.http.get(f"{ISSUER}/readyz")
    finally:
        await stack.rt.engine.dispose()
        stack.rt.engine = real
    assert response.status_code == 200
    assert value(response.text, "gateway_database_up") == 0
    assert ("gateway_trail_size", ()) not in samples(response.text)
    assert ready.status_code == 503  # and the readiness probe agrees


@pytest.fixture
async def guarded(make_settings: Callable[..., Settings]) -> AsyncIterator[Stack]:
    async with running_stack(make_settings(GATEWAY_METRICS_TOKEN="s3cret-metrics-token")) as s:
        yield s


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Basic s3cret-metrics-token", "Bearer s3cret-metrics-tokenX", ""],
)
async def test_with_a_metrics_token_nobody_else_reads_them(
    guarded: Stack, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await get_metrics(guarded, **headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert response.json()["type"] == "urn:gateway:error:metrics_token_required"
    assert "gateway_transfers_total" not in response.text


async def test_with_the_metrics_token_they_are_served(guarded: Stack) -> None:
    response = await get_metrics(guarded, Authorization="Bearer s3cret-metrics-token")
    assert response.status_code == 200
    assert value(response.text, "gateway_metrics_workers") == 1


def test_the_token_is_read_from_the_environment_and_kept_out_of_reprs() -> None:
    settings = Settings.from_env({"GATEWAY_DEMO": "1", "GATEWAY_METRICS_TOKEN": " m9-Qz7 "})
    assert settings.metrics_token.value == "m9-Qz7"
    assert "m9-Qz7" not in repr(settings)
    assert Settings.from_env({"GATEWAY_DEMO": "1"}).metrics_token.value == ""
