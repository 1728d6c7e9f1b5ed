"""pgproxy in front of the throwaway cluster, logging clients in with a token from the demo OIDC issuer.

pgproxy is started as ``<venv>/bin/pgproxy run ...`` (or ``--pgproxy-cmd``, to which the same ``run``
arguments are appended; or, when pgproxy is not installed in the virtualenv, ``python -m pgproxy.cli``
from this repository). The token minted by ``pgproxy.auth.demo_issuer.DemoIssuer`` is the password
pgbench and psql send.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from benchkit import BenchError
from benchkit.postgres import BENCH_DB, Postgres
from benchkit.procs import Service, run_checked, start_service, wait_for_port

IDENTITY_SUBJECT = "bench"
IDENTITY_EMAIL = "bench@example.com"
_REPO_ROOT = Path(__file__).resolve().parents[2]


class Issuer(Protocol):
    """The part of ``DemoIssuer`` the benchmark uses."""

    @property
    def issuer(self) -> str: ...

    @property
    def audience(self) -> str: ...

    @property
    def jwks_path(self) -> str | os.PathLike[str]: ...

    def mint(self, subject: str, *, email: str, ttl_seconds: int) -> str: ...


class IssuerFactory(Protocol):
    """The ``DemoIssuer`` class itself, as far as the benchmark uses it."""

    def load_or_create(self, directory: Path) -> Issuer: ...


@dataclass(frozen=True)
class PgproxyCommand:
    """How to launch pgproxy: the executable argv, extra arguments appended after ours, and whether the
    repository must be put on PYTHONPATH (when running from a checkout where pgproxy is not installed)."""

    base: tuple[str, ...]
    extra: tuple[str, ...]
    from_checkout: bool = False

    @classmethod
    def build(cls, override: str | None, extra: Sequence[str]) -> PgproxyCommand:
        """``--pgproxy-cmd`` if given, else the ``pgproxy`` script beside this interpreter, else
        ``python -m pgproxy.cli`` from this repository."""
        if override:
            return cls(base=tuple(shlex.split(override)), extra=tuple(extra))
        script = Path(sys.executable).parent / "pgproxy"
        if script.is_file():
            return cls(base=(str(script),), extra=tuple(extra))
        return cls(base=(sys.executable, "-m", "pgproxy.cli"), extra=tuple(extra), from_checkout=True)

    def describe(self) -> str:
        """The command as a shell would show it."""
        prefix = [f"PYTHONPATH={_REPO_ROOT}"] if self.from_checkout else []
        return shlex.join([*prefix, *self.base, "run", "...", *self.extra])

    def env(self) -> dict[str, str]:
        """The environment pgproxy runs with: ours, plus the repository on PYTHONPATH if needed."""
        env = dict(os.environ)
        if self.from_checkout:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        return env


def check_pgproxy(command: PgproxyCommand) -> None:
    """Fail early when ``pgproxy run --help`` does not work or the demo issuer cannot be imported."""
    try:
        run_checked([*command.base, "run", "--help"], cwd=Path("/"), env=command.env(), timeout=60)
    except BenchError as exc:
        raise BenchError(
            f"pgproxy is not runnable as `{command.describe()}`:\n{exc}\n"
            "install it (.venv/bin/pip install -e .), pass --pgproxy-cmd, or leave it out with "
            "--targets direct,pgbouncer"
        ) from exc
    _demo_issuer_class()


def _demo_issuer_class() -> IssuerFactory:
    """``pgproxy.auth.demo_issuer.DemoIssuer``, importing from the repository if pgproxy is not installed."""
    try:
        module = importlib.import_module("pgproxy.auth.demo_issuer")
    except ImportError:
        sys.path.append(str(_REPO_ROOT))
        try:
            module = importlib.import_module("pgproxy.auth.demo_issuer")
        except ImportError as exc:
            raise BenchError(f"cannot import pgproxy.auth.demo_issuer: {exc}") from exc
    return cast(IssuerFactory, module.DemoIssuer)


def load_issuer(directory: Path) -> Issuer:
    """A demo OIDC issuer whose keys and JWKS file live in ``directory``."""
    directory.mkdir(exist_ok=True)
    return _demo_issuer_class().load_or_create(directory)


def mint_token(issuer: Issuer, ttl_seconds: int) -> str:
    """A fresh token for the benchmark identity, valid for ``ttl_seconds``."""
    return issuer.mint(IDENTITY_SUBJECT, email=IDENTITY_EMAIL, ttl_seconds=ttl_seconds)


# The benchmark identity's rule, added to the repository's example policies so that every statement
# is judged against a realistic policy set (guardrails, agents, deployers, DBAs) on the hot path.
BENCH_POLICY = f"""\
rules:
  - id: bench-pgbench
    description: the benchmark client runs pgbench's statements
    who: {{subjects: [{IDENTITY_SUBJECT}]}}
    databases: ["*"]
    categories: [read, write, session, transaction]
    effect: allow
"""


MASK_MODES = ("none", "other", "accounts")

# The masked columns of each --masks mode, on the benchmark database, for the benchmark identity.
# ``other``: columns of tables pgbench -S never reads, so masking is on for the session but no result
# column is masked (DataRows are relayed as they are); ``accounts``: the abalance column pgbench -S
# reads (``SELECT abalance FROM pgbench_accounts WHERE aid = :aid``), hashed, so every row is rewritten.
_MASKED_COLUMNS: dict[str, dict[str, str]] = {
    "none": {},
    "other": {"public.pgbench_branches.filler": "redact", "public.pgbench_tellers.filler": "hash"},
    "accounts": {"public.pgbench_accounts.abalance": "hash"},
}

# The fixed key of the hash strategy while masks are on (PGPROXY_MASK_KEY), so hashes are the same
# from one benchmark run to the next and pgproxy does not warn about a random key.
BENCH_MASK_KEY = "pgproxy-benchmark-mask-key-0123456789abcdef"


def mask_policy(masks: str) -> str:
    """The ``masks:`` block for ``masks`` (one of ``MASK_MODES``); empty for ``none``."""
    if masks not in _MASKED_COLUMNS:
        raise BenchError(f"unknown masks mode {masks!r}; expected one of {', '.join(MASK_MODES)}")
    columns = _MASKED_COLUMNS[masks]
    if not columns:
        return ""
    lines = [
        "masks:",
        f"  - id: bench-masks-{masks}",
        f"    description: the benchmark's masked columns (--masks {masks})",
        f"    databases: [{BENCH_DB}]",
        f"    who: {{subjects: [{IDENTITY_SUBJECT}]}}",
        "    columns:",
        *(f"      {column}: {strategy}" for column, strategy in columns.items()),
    ]
    return "\n".join(lines) + "\n"


def write_bench_policies(directory: Path, masks: str = "none") -> Path:
    """A policy directory: the repository's example policies plus the benchmark identity's rule and,
    unless ``masks`` is ``none``, its masked columns."""
    directory.mkdir(exist_ok=True)
    for example in sorted((_REPO_ROOT / "policies").glob("*.yaml")):
        shutil.copyfile(example, directory / example.name)
    (directory / "zz-bench.yaml").write_text(BENCH_POLICY + mask_policy(masks))
    return directory


AUDIT_STORES = ("jsonl", "postgres", "off")


def audit_argv(store: str, cluster: Postgres, workdir: Path) -> list[str]:
    """The audit settings for ``store``: a JSONL file in ``workdir``, the ``pgproxy`` schema of the
    benchmark database (same server: its commits compete with the workload, as they would on one box),
    or no audit log."""
    if store == "jsonl":
        return ["--audit-jsonl", os.fspath(workdir / "audit.jsonl")]
    if store == "postgres":
        return ["--audit-dsn", cluster.url()]
    return ["--audit-disabled"]


def pgproxy_argv(
    command: PgproxyCommand, cluster: Postgres, issuer: Issuer, port: int, policies: Path, *,
    audit: Sequence[str] = ("--audit-disabled",),
) -> list[str]:
    """The full ``pgproxy run`` command line for listening on 127.0.0.1:``port``."""
    return [
        *command.base, "run",
        "--listen", f"127.0.0.1:{port}",
        "--upstream", cluster.url(),
        "--oidc-issuer", issuer.issuer,
        "--oidc-audience", issuer.audience,
        "--oidc-jwks", os.fspath(issuer.jwks_path),
        "--allow-plaintext-loopback",
        "--policies", os.fspath(policies),
        *audit,
        *command.extra,
    ]


def start_pgproxy(
    command: PgproxyCommand, cluster: Postgres, issuer: Issuer, workdir: Path, port: int, *,
    audit_store: str = "off", masks: str = "none",
) -> Service:
    """Start pgproxy (working directory ``workdir``) and wait until it listens on 127.0.0.1:``port``.
    With masks on, pgproxy gets the fixed ``BENCH_MASK_KEY`` through ``PGPROXY_MASK_KEY``."""
    workdir.mkdir(exist_ok=True)
    env = command.env()
    if masks != "none":
        env["PGPROXY_MASK_KEY"] = BENCH_MASK_KEY
    service = start_service(
        "pgproxy",
        pgproxy_argv(command, cluster, issuer, port, write_bench_policies(workdir / "policies", masks),
                     audit=audit_argv(audit_store, cluster, workdir)),
        cwd=workdir,
        log_path=workdir / "pgproxy.log",
        env=env,
    )
    try:
        wait_for_port(port, timeout=60, alive=service)
    except BaseException:
        service.stop()
        raise
    return service
