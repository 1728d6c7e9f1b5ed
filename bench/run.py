"""Benchmark pgproxy against direct PostgreSQL and pgbouncer in one run, on one machine, with pgbench.

In one invocation this script:

1. initdb's and starts a throwaway PostgreSQL 15 on 127.0.0.1 and loads it with ``pgbench -i -s 10``;
2. starts pgbouncer (session mode) and pgproxy in front of it, each on its own port;
3. runs ``pgbench -S`` (select-only) for every configuration of clients (1, 16) x protocol (simple,
   extended), running the targets back to back within each configuration (rotating their order on each
   repeat) so that drift in machine speed hits all of them alike;
4. reads the proxies' CPU time from /proc before and after each run to get CPU microseconds per query;
5. prints a table of medians and ratios, optionally writes everything as JSON (``--json``);
6. stops every process and removes every temporary file on exit, including on Ctrl-C and errors.

Run it with the project's virtualenv: ``.venv/bin/python bench/run.py --quick``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from benchkit import BenchError
from benchkit.pgbench import Config, check_masked, client_env, run_pgbench, smoke_test
from benchkit.pgbouncer import DEFAULT_PGBOUNCER, check_pgbouncer, pgbouncer_version, start_pgbouncer
from benchkit.pgproxy import (
    AUDIT_STORES,
    MASK_MODES,
    PgproxyCommand,
    check_pgproxy,
    load_issuer,
    mint_token,
    start_pgproxy,
)
from benchkit.postgres import (
    DEFAULT_PG_BIN,
    Postgres,
    check_pg_bin,
    init_cluster,
    init_pgbench,
    server_version,
)
from benchkit.procs import Service, check_service_user, free_port, make_owned_by_service_user
from benchkit.report import (
    ALL_TARGETS,
    DIRECT,
    PGBOUNCER,
    PGPROXY,
    Measurement,
    json_document,
    render_table,
    summarize,
)

DEFAULT_DURATION, QUICK_DURATION = 15, 5
DEFAULT_WARMUP, QUICK_WARMUP = 3, 1
MODES = ("simple", "extended")


@dataclass(frozen=True)
class Options:
    """Validated command-line settings."""

    duration: int
    warmup: int
    repeat: int
    clients: tuple[int, ...]
    modes: tuple[str, ...]
    targets: tuple[str, ...]
    jobs: int
    scale: int
    json_path: Path | None
    pg_bin: Path
    pgbouncer: Path
    pgproxy: PgproxyCommand
    audit: str = "jsonl"
    masks: str = "none"

    def configs(self) -> list[Config]:
        """The matrix, in run order: fewest clients first, simple before extended."""
        return [
            Config(clients=clients, jobs=min(clients, self.jobs), mode=mode)
            for clients in self.clients
            for mode in self.modes
        ]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, for the report."""
        return {
            "duration_s": self.duration, "warmup_s": self.warmup, "repeat": self.repeat,
            "clients": list(self.clients), "modes": list(self.modes), "targets": list(self.targets),
            "max_jobs": self.jobs, "scale": self.scale, "pg_bin": str(self.pg_bin),
            "pgbouncer": str(self.pgbouncer), "pgproxy_cmd": self.pgproxy.describe(),
            "audit": self.audit, "masks": self.masks,
        }


@dataclass
class Target:
    """Something pgbench can connect to: its port, the service to bill CPU to, and how to get a password."""

    name: str
    port: int
    service: Service | None
    password: Callable[[int], str | None]

    def env(self, ttl_seconds: int) -> dict[str, str]:
        """Client environment for a session lasting up to ``ttl_seconds``."""
        return client_env(self.password(ttl_seconds))

    def cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the proxy's process tree (None for direct)."""
        return self.service.cpu_seconds() if self.service else None


def _csv(
    kind: Callable[[str], object], allowed: Sequence[str] | None = None
) -> Callable[[str], tuple[object, ...]]:
    """An argparse type for comma-separated lists, optionally restricted to ``allowed`` values."""

    def parse(text: str) -> tuple[object, ...]:
        items = tuple(kind(item.strip()) for item in text.split(",") if item.strip())
        if not items or (allowed is not None and any(item not in allowed for item in items)):
            choices = f" from {', '.join(allowed)}" if allowed else ""
            raise argparse.ArgumentTypeError(f"expected a comma-separated list{choices}: {text!r}")
        return items

    return parse


def _parser() -> argparse.ArgumentParser:
    """The command line; ``docs/benchmarks.md`` explains each option."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="pgbench select-only: direct PostgreSQL vs pgbouncer vs pgproxy, on this machine.",
    )
    add = parser.add_argument
    add("--duration", type=int, help=f"seconds per pgbench run (default {DEFAULT_DURATION}; --quick: "
        f"{QUICK_DURATION})")
    add("--quick", action="store_true", help=f"{QUICK_DURATION}s runs and {QUICK_WARMUP}s warm-up")
    add("--warmup", type=int, help=f"seconds of warm-up per target (default {DEFAULT_WARMUP}; 0 skips)")
    add("--repeat", type=int, default=1, help="runs per cell; the table shows medians (default 1)")
    add("--clients", type=_csv(int), default=(1, 16), help="client counts (default 1,16)")
    add("--modes", type=_csv(str, MODES), default=MODES, help="query protocols (default simple,extended)")
    add("--targets", type=_csv(str, ALL_TARGETS), default=ALL_TARGETS,
        help="what to measure (default direct,pgbouncer,pgproxy)")
    add("--jobs", type=int, default=2, help="max pgbench threads, capped at the client count (default 2)")
    add("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    add("--json", dest="json_path", type=Path, help="also write all runs and medians as JSON here")
    add("--pg-bin", type=Path, default=DEFAULT_PG_BIN, help=f"PostgreSQL programs (default {DEFAULT_PG_BIN})")
    add("--pgbouncer", type=Path, default=DEFAULT_PGBOUNCER, help=f"pgbouncer (default {DEFAULT_PGBOUNCER})")
    add("--pgproxy-cmd", help="command instead of <venv>/bin/pgproxy; `run --listen ...` is appended")
    add("--audit", choices=AUDIT_STORES, default="jsonl",
        help="pgproxy's audit log: a JSONL file, the postgres schema of the benchmark database, or off "
             "(default jsonl)")
    add("--masks", choices=MASK_MODES, default="none",
        help="masked columns for the benchmark identity: none; other (columns pgbench -S never reads: "
             "masking on, no result column masked); accounts (pgbench_accounts.abalance hashed: every "
             "row rewritten) (default none)")
    add("--pgproxy-arg", action="append", default=[], metavar="ARG",
        help="extra argument appended to `pgproxy run` (repeatable), e.g. --pgproxy-arg=--log-level=WARNING")
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    """Parse and validate the command line."""
    parser = _parser()
    ns = parser.parse_args(argv)
    duration = ns.duration if ns.duration is not None else (QUICK_DURATION if ns.quick else DEFAULT_DURATION)
    warmup = ns.warmup if ns.warmup is not None else (QUICK_WARMUP if ns.quick else DEFAULT_WARMUP)
    if duration < 1 or warmup < 0 or ns.repeat < 1 or ns.jobs < 1 or ns.scale < 1:
        parser.error("--duration, --repeat, --jobs and --scale must be positive; --warmup not negative")
    if any(clients < 1 for clients in ns.clients):
        parser.error("--clients must be positive")
    return Options(
        duration=duration, warmup=warmup, repeat=ns.repeat,
        clients=tuple(ns.clients), modes=tuple(ns.modes),
        targets=tuple(t for t in ALL_TARGETS if t in ns.targets),
        jobs=ns.jobs, scale=ns.scale, json_path=ns.json_path, pg_bin=ns.pg_bin, pgbouncer=ns.pgbouncer,
        pgproxy=PgproxyCommand.build(ns.pgproxy_cmd, ns.pgproxy_arg),
        audit=ns.audit, masks=ns.masks,
    )


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def preflight(options: Options) -> None:
    """Check every program we need before spending time on initdb."""
    check_service_user()
    check_pg_bin(options.pg_bin)
    if PGBOUNCER in options.targets:
        check_pgbouncer(options.pgbouncer)
    if PGPROXY in options.targets:
        check_pgproxy(options.pgproxy)


def make_workdir(stack: ExitStack) -> Path:
    """A private temp dir, owned by the service user when root, removed on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="pgproxy-bench-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    make_owned_by_service_user(workdir)
    return workdir


def start_cluster(options: Options, stack: ExitStack, workdir: Path) -> Postgres:
    """Start PostgreSQL (stopped on exit) and load the pgbench tables."""
    log(f"starting PostgreSQL from {options.pg_bin} in {workdir}")
    cluster = init_cluster(options.pg_bin, workdir, free_port())
    stack.callback(_quietly, cluster.stop)
    cluster.start()
    log(f"pgbench -i -s {options.scale} on port {cluster.port}")
    init_pgbench(cluster, options.scale, client_env())
    return cluster


def start_targets(options: Options, stack: ExitStack, workdir: Path, cluster: Postgres) -> list[Target]:
    """Start the proxies asked for (stopped on exit) and smoke-test every target with psql."""
    targets = [Target(DIRECT, cluster.port, None, lambda _ttl: None)]
    if PGBOUNCER in options.targets:
        port = free_port()
        bouncer = start_pgbouncer(options.pgbouncer, cluster, workdir, port)
        stack.callback(_quietly, bouncer.stop)
        targets.append(Target(PGBOUNCER, port, bouncer, lambda _ttl: None))
    if PGPROXY in options.targets:
        targets.append(_start_pgproxy_target(options, stack, workdir, cluster))
    targets = [target for target in targets if target.name in options.targets]
    for target in targets:
        try:
            smoke_test(options.pg_bin, target.port, env=target.env(600), cwd=workdir)
        except BenchError as exc:
            tail = f"\n{target.service.log_tail()}" if target.service else ""
            raise BenchError(f"{target.name}: {exc}{tail}") from exc
        log(f"{target.name} ready on 127.0.0.1:{target.port}")
    proxy = next((target for target in targets if target.name == PGPROXY), None)
    if proxy is not None and options.masks == "accounts":
        try:
            direct, masked = check_masked(options.pg_bin, cluster.port, proxy.port, direct_env=client_env(),
                                          proxy_env=proxy.env(600), cwd=workdir)
        except BenchError as exc:
            tail = f"\n{proxy.service.log_tail()}" if proxy.service else ""
            raise BenchError(f"{PGPROXY}: {exc}{tail}") from exc
        log(f"{PGPROXY} masks pgbench_accounts.abalance: {direct} directly, {masked} through pgproxy")
    return targets


def _start_pgproxy_target(options: Options, stack: ExitStack, workdir: Path, cluster: Postgres) -> Target:
    """Create the demo issuer, start pgproxy and return a target that mints a token per session."""
    issuer = load_issuer(workdir / "issuer")
    port = free_port()
    log(f"starting pgproxy: {options.pgproxy.describe()}")
    proxy = start_pgproxy(options.pgproxy, cluster, issuer, workdir / "pgproxy", port, audit_store=options.audit,
                          masks=options.masks)
    stack.callback(_quietly, proxy.stop)
    return Target(PGPROXY, port, proxy, lambda ttl: mint_token(issuer, ttl))


def measure(options: Options, target: Target, config: Config, repeat: int, workdir: Path) -> Measurement:
    """One pgbench run with the proxy's CPU time read just before and just after it."""
    env = target.env(options.duration + 600)
    if target.service:
        target.service.check_running()
    before = target.cpu_seconds()
    try:
        result = run_pgbench(options.pg_bin, target.port, config, options.duration, env=env, cwd=workdir)
    except BenchError as exc:
        tail = f"\n{target.service.log_tail()}" if target.service else ""
        raise BenchError(f"{target.name} {config.label}: {exc}{tail}") from exc
    after = target.cpu_seconds()
    cpu = after - before if after is not None and before is not None else None
    return Measurement(config=config, target=target.name, repeat=repeat, result=result, cpu_seconds=cpu)


def warm_up(options: Options, targets: Sequence[Target], workdir: Path) -> None:
    """A short run per target at the highest client count, so caches and pools exist before measuring."""
    if options.warmup == 0:
        return
    clients = max(options.clients)
    config = Config(clients=clients, jobs=min(clients, options.jobs), mode="simple")
    for target in targets:
        log(f"warm-up {target.name}: {options.warmup}s at {config.label}")
        env = target.env(options.warmup + 600)
        run_pgbench(options.pg_bin, target.port, config, options.warmup, env=env, cwd=workdir)


def _describe(index: int, total: int, run: Measurement) -> str:
    cpu = f", CPU {run.cpu_us_per_query:.1f} µs/q" if run.cpu_us_per_query is not None else ""
    return (
        f"[{index:>{len(str(total))}}/{total}] {run.config.label:<14} {run.target:<9} "
        f"{run.result.tps:9.0f} tps  {run.result.latency_ms:.3f} ms{cpu}"
    )


def run_matrix(options: Options, targets: Sequence[Target], workdir: Path) -> list[Measurement]:
    """Every configuration, each repeat running all targets back to back in a rotated order."""
    configs = options.configs()
    total = len(configs) * options.repeat * len(targets)
    measurements: list[Measurement] = []
    for config in configs:
        for repeat in range(options.repeat):
            shift = repeat % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                run = measure(options, target, config, repeat, workdir)
                measurements.append(run)
                log(_describe(len(measurements), total, run))
    return measurements


def environment(options: Options) -> dict[str, object]:
    """Facts about the machine and programs, recorded in the JSON so runs can be compared."""
    info: dict[str, object] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "postgres": server_version(options.pg_bin),
        "running_as_root": os.geteuid() == 0,
    }
    if PGBOUNCER in options.targets:
        info["pgbouncer"] = pgbouncer_version(options.pgbouncer)
    if PGPROXY in options.targets:
        info["pgproxy_cmd"] = options.pgproxy.describe()
    return info


def run(options: Options, stack: ExitStack) -> None:
    """The whole benchmark; every started process and temp dir is registered on ``stack`` for cleanup."""
    preflight(options)
    info = environment(options)
    workdir = make_workdir(stack)
    cluster = start_cluster(options, stack, workdir)
    targets = start_targets(options, stack, workdir, cluster)
    warm_up(options, targets, workdir)
    started = time.monotonic()
    measurements = run_matrix(options, targets, workdir)
    info["matrix_seconds"] = round(time.monotonic() - started, 1)
    summaries = summarize(measurements, options.configs())
    print()
    print(f"pgbench -S, {options.duration}s per run, median of {options.repeat}, scale {options.scale}, "
          f"{info['usable_cpus']} CPUs shared by client, proxy and server"
          + (f"; pgproxy audit {options.audit}, masks {options.masks}" if PGPROXY in options.targets else ""))
    print(render_table(summaries, options.targets))
    if options.json_path is not None:
        document = json_document(options.as_dict(), info, measurements, summaries)
        options.json_path.write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {options.json_path}")


def _quietly(action: Callable[[], None]) -> None:
    """Run a cleanup step; report but do not propagate its failure, so later steps still run."""
    try:
        action()
    except Exception as exc:  # cleanup must go on whatever one step raised
        log(f"cleanup: {exc}")


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, report errors readably, and always clean up."""
    options = parse_options(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # respect nohup
        signal.signal(signal.SIGHUP, _interrupt)
    stack = ExitStack()
    try:
        run(options, stack)
        return 0
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
