"""RowLimits counts rows per statement and names the limit that was crossed."""

from __future__ import annotations

import pytest

from pgproxy.gate.limits import RowLimits

D, COPY, C, E, Z, SUSPENDED = (ord(kind) for kind in "DdCEZs")


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_rows_over_the_limit_are_reported_at_the_first_extra_row(limit: int) -> None:
    limits = RowLimits(limit, None, "session s")
    assert [limits.over(D) for _ in range(limit)] == [None] * limit
    reason = limits.over(D)
    assert reason is not None and f"more than {limit} rows" in reason and "session s" in reason


@pytest.mark.parametrize("end", [C, E, Z])
def test_each_statement_has_its_own_count(end: int) -> None:
    limits = RowLimits(2, None, "s")
    for _ in range(3):
        assert limits.over(D) is None and limits.over(D) is None
        assert limits.over(end) is None


def test_a_portal_fetched_in_batches_counts_as_one_statement() -> None:
    limits = RowLimits(3, None, "s")
    assert [limits.over(kind) for kind in (D, D, SUSPENDED, D)] == [None] * 4
    assert limits.over(D) is not None


def test_export_rows_are_limited_separately() -> None:
    limits = RowLimits(None, 2, "s")
    assert [limits.over(kind) for kind in (D, D, D, COPY, COPY)] == [None] * 5
    reason = limits.over(COPY)
    assert reason is not None and "max_export_rows" in reason


def test_no_limits_is_inactive() -> None:
    assert not RowLimits(None, None, "s").active
