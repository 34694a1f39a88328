"""Times of trail events (RFC 3339 §5.6, in UTC); ids are tested in tests/test_ids.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.trail.store import _rfc3339

PROPERTY = settings(max_examples=300, deadline=None, database=None)

OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@PROPERTY
@given(
    st.datetimes(
        min_value=datetime(1001, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.one_of(st.just(UTC), OFFSETS),
    )
)
def test_time_is_the_utc_strftime_form(t: datetime) -> None:
    # The form written before isoformat replaced strftime, for every 4-digit year.
    assert _rfc3339(t) == t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_time_always_has_six_fraction_digits_and_four_year_digits() -> None:
    assert _rfc3339(datetime(2026, 11, 29, 10, 0, tzinfo=UTC)) == "2026-11-29T10:00:00.000000Z"
    assert _rfc3339(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0999-01-02T03:04:05.000006Z"


def test_time_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        _rfc3339(datetime(2026, 11, 29, 10, 0))
