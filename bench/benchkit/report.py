"""Turning individual pgbench runs into the benchmark's table and JSON document.

Each (configuration, target) cell is the median over ``--repeat`` runs of tps, average latency and proxy
CPU µs per query; ratios and added latency are computed from those medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchkit.pgbench import Config, PgbenchResult

DIRECT, PGBOUNCER, PGPROXY = "direct", "pgbouncer", "pgproxy"
ALL_TARGETS = (DIRECT, PGBOUNCER, PGPROXY)
_SHORT = {DIRECT: "direct", PGBOUNCER: "bouncer", PGPROXY: "pgproxy"}


@dataclass(frozen=True)
class Measurement:
    """One pgbench run against one target, with the proxy's CPU seconds over the run (None for direct)."""

    config: Config
    target: str
    repeat: int
    result: PgbenchResult
    cpu_seconds: float | None

    @property
    def cpu_us_per_query(self) -> float | None:
        """Proxy CPU microseconds per select-only transaction (one query each)."""
        if self.cpu_seconds is None or self.result.transactions == 0:
            return None
        return self.cpu_seconds * 1e6 / self.result.transactions

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "config": self.config.label, "clients": self.config.clients, "jobs": self.config.jobs,
            "mode": self.config.mode, "target": self.target, "repeat": self.repeat,
            "tps": self.result.tps, "latency_ms": self.result.latency_ms,
            "transactions": self.result.transactions, "failed": self.result.failed,
            "cpu_seconds": _round(self.cpu_seconds, 3), "cpu_us_per_query": _round(self.cpu_us_per_query, 2),
        }


@dataclass(frozen=True)
class TargetSummary:
    """Medians for one target in one configuration."""

    tps: float
    latency_ms: float
    cpu_us_per_query: float | None
    runs: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "tps": round(self.tps, 1), "latency_ms": self.latency_ms,
            "cpu_us_per_query": _round(self.cpu_us_per_query, 2), "runs": self.runs,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize_target(runs: Sequence[Measurement]) -> TargetSummary:
    """Median tps, latency and CPU per query over repeated runs."""
    return TargetSummary(
        tps=statistics.median(run.result.tps for run in runs),
        latency_ms=statistics.median(run.result.latency_ms for run in runs),
        cpu_us_per_query=_median_or_none([run.cpu_us_per_query for run in runs]),
        runs=len(runs),
    )


@dataclass(frozen=True)
class ConfigSummary:
    """All targets' medians for one configuration, plus the derived comparisons."""

    config: Config
    targets: dict[str, TargetSummary]

    def ratio(self, target: str, baseline: str) -> float | None:
        """tps(target) / tps(baseline), or None if either is missing."""
        if target not in self.targets or baseline not in self.targets:
            return None
        return self.targets[target].tps / self.targets[baseline].tps

    def added_latency_us(self, target: str) -> float | None:
        """Average latency of ``target`` minus direct, in microseconds."""
        if target not in self.targets or DIRECT not in self.targets:
            return None
        return (self.targets[target].latency_ms - self.targets[DIRECT].latency_ms) * 1000

    def cpu_us_per_query(self, target: str) -> float | None:
        """Median proxy CPU µs per query for ``target``."""
        summary = self.targets.get(target)
        return summary.cpu_us_per_query if summary else None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "config": self.config.label, "clients": self.config.clients, "jobs": self.config.jobs,
            "mode": self.config.mode,
            "targets": {name: summary.as_dict() for name, summary in self.targets.items()},
            "pgproxy_vs_direct": _round(self.ratio(PGPROXY, DIRECT), 4),
            "pgproxy_vs_pgbouncer": _round(self.ratio(PGPROXY, PGBOUNCER), 4),
            "pgbouncer_vs_direct": _round(self.ratio(PGBOUNCER, DIRECT), 4),
            "pgproxy_added_latency_us": _round(self.added_latency_us(PGPROXY), 1),
            "pgbouncer_added_latency_us": _round(self.added_latency_us(PGBOUNCER), 1),
            "pgproxy_cpu_us_per_query": _round(self.cpu_us_per_query(PGPROXY), 2),
            "pgbouncer_cpu_us_per_query": _round(self.cpu_us_per_query(PGBOUNCER), 2),
        }


def summarize(measurements: Sequence[Measurement], configs: Sequence[Config]) -> list[ConfigSummary]:
    """One summary per configuration, in matrix order."""
    summaries = []
    for config in configs:
        targets: dict[str, TargetSummary] = {}
        for target in ALL_TARGETS:
            runs = [m for m in measurements if m.config == config and m.target == target]
            if runs:
                targets[target] = summarize_target(runs)
        summaries.append(ConfigSummary(config=config, targets=targets))
    return summaries


Column = tuple[str, Callable[[ConfigSummary], str]]


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _target_columns(target: str) -> list[Column]:
    def tps(s: ConfigSummary) -> str:
        return _fmt(s.targets[target].tps if target in s.targets else None, ".0f")

    def latency(s: ConfigSummary) -> str:
        return _fmt(s.targets[target].latency_ms if target in s.targets else None, ".3f")

    return [(f"{_SHORT[target]} tps", tps), (f"{_SHORT[target]} ms", latency)]


def _comparison_columns(targets: Sequence[str]) -> list[Column]:
    columns: list[Column] = []
    if PGPROXY in targets and DIRECT in targets:
        columns.append(("pgproxy/direct", lambda s: _fmt(s.ratio(PGPROXY, DIRECT), ".2f", "x")))
    if PGPROXY in targets and PGBOUNCER in targets:
        columns.append(("pgproxy/bouncer", lambda s: _fmt(s.ratio(PGPROXY, PGBOUNCER), ".2f", "x")))
    if PGBOUNCER in targets and DIRECT in targets:
        columns.append(("bouncer/direct", lambda s: _fmt(s.ratio(PGBOUNCER, DIRECT), ".2f", "x")))
    if PGPROXY in targets and DIRECT in targets:
        columns.append(("pgproxy +µs", lambda s: _fmt(s.added_latency_us(PGPROXY), "+.1f")))
    if PGPROXY in targets:
        columns.append(("pgproxy CPU µs/q", lambda s: _fmt(s.cpu_us_per_query(PGPROXY), ".1f")))
    if PGBOUNCER in targets:
        columns.append(("bouncer CPU µs/q", lambda s: _fmt(s.cpu_us_per_query(PGBOUNCER), ".1f")))
    return columns


def render_table(summaries: Sequence[ConfigSummary], targets: Sequence[str]) -> str:
    """A fixed-width text table, one row per configuration."""
    columns: list[Column] = [("config", lambda s: s.config.label)]
    for target in ALL_TARGETS:
        if target in targets:
            columns.extend(_target_columns(target))
    columns.extend(_comparison_columns(targets))
    rows = [[header for header, _ in columns]]
    rows.extend([cell(summary) for _, cell in columns] for summary in summaries)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for row in rows:
        first = row[0].ljust(widths[0])
        rest = [value.rjust(width) for value, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
    return "\n".join(lines)


def json_document(
    settings: dict[str, object],
    environment: dict[str, object],
    measurements: Sequence[Measurement],
    summaries: Sequence[ConfigSummary],
) -> dict[str, object]:
    """Everything the run measured, for ``--json``."""
    return {
        "settings": settings,
        "environment": environment,
        "summary": [summary.as_dict() for summary in summaries],
        "runs": [measurement.as_dict() for measurement in measurements],
    }
