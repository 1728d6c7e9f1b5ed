"""pgjdbc through pgproxy: the Java probe in tests/drivers/jdbc runs each scenario once straight against
PostgreSQL (as pgproxy's upstream role) and once through pgproxy, and the two printouts must be equal.

The probe prints one line per row or value, names it creates are unique per run and printed as ``<tag>``,
and backend pids are only ever compared, never printed, so nothing needs normalising. pgjdbc comes from
Debian's ``libpostgresql-jdbc-java`` (``.ci/run`` installs it); the probe is compiled once per session.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.compare import unique_name
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres
from tests.support.probe_runs import side_by_side
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration

PROBE_SOURCE = Path(__file__).resolve().parents[1] / "drivers" / "jdbc" / "JdbcProbe.java"
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
NON_VALIDATING = "sslfactory=org.postgresql.ssl.NonValidatingFactory"


@dataclass(frozen=True)
class JdbcProbe:
    classpath: str

    def start(self, url: str, user: str, password: str, scenario: str, *, hold: bool = False
              ) -> subprocess.Popen[bytes]:
        """Start a run; with ``hold`` it keeps its session open after the scenario until told on stdin."""
        return subprocess.Popen(
            ["java", "-Duser.timezone=UTC", "-Dfile.encoding=UTF-8", "-XX:TieredStopAtLevel=1",
             "-cp", self.classpath, "JdbcProbe", url, user, password, scenario, unique_name("probe")],
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PROBE_HOLD": "1"} if hold else None,
        )


@pytest.fixture(scope="session")
def jdbc_probe(tmp_path_factory: pytest.TempPathFactory) -> JdbcProbe:
    assert PGJDBC_JAR.is_file(), f"{PGJDBC_JAR} missing: apt-get install libpostgresql-jdbc-java (.ci/run does)"
    assert shutil.which("javac") and shutil.which("java"), "no JDK: apt-get install default-jdk-headless"
    classes = tmp_path_factory.mktemp("jdbc-probe")
    result = subprocess.run(
        ["javac", "-encoding", "UTF-8", "-Xlint:all", "-Werror", "-cp", str(PGJDBC_JAR), "-d", str(classes),
         str(PROBE_SOURCE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return JdbcProbe(f"{classes}:{PGJDBC_JAR}")


def direct_url(postgres: RealPostgres, options: str) -> str:
    return f"jdbc:postgresql://{postgres.host}:{postgres.port}/{TEST_DATABASE}?sslmode=disable" + (
        f"&{options}" if options else "")


# How the proxied run connects: TLS (pgproxy's certificate is self-signed), plaintext (allowed from
# loopback), or pgjdbc's default (sslmode=prefer).
SSL_MODES = {"tls": f"sslmode=require&{NON_VALIDATING}", "plaintext": "sslmode=disable", "default": ""}


def proxied_url(proxy: RunningProxy, options: str, *, ssl: str = "tls") -> str:
    query = "&".join(part for part in (SSL_MODES[ssl], options) if part)
    return f"jdbc:postgresql://127.0.0.1:{proxy.port}/{TEST_DATABASE}?{query}"


def both(probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, scenario: str, options: str = "",
         *, ssl: str = "tls") -> list[str]:
    """The scenario's output lines, after checking that the direct and the proxied run printed the same.

    The two runs go side by side (two JVMs): they share nothing but the server.
    """
    subject = unique_name("jdbc")
    lines, held = side_by_side(
        lambda: probe.start(direct_url(postgres, options), UPSTREAM_ROLE, "", scenario),
        lambda: probe.start(proxied_url(proxy, options, ssl=ssl), "agent", proxy.idp.mint(subject), scenario,
                            hold=True),
        proxy, subject, scenario,
    )
    assert lines[-1] == "done|autocommit=true|closed=false"
    # (Sessions the scenario opened besides its own may still be closing: they must be idle too.)
    assert held and set(held) == {(0, "I")}, f"pgproxy's relay state for the held session: {held}"
    return lines


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    ("options", "ssl"),
    [("", "tls"), ("", "plaintext"), ("", "default"), ("preferQueryMode=simple", "tls")],
    ids=["extended-tls", "extended-plaintext", "extended-sslmode-default", "simple-tls"],
)
def test_statements_and_many_types(
    jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, options: str, ssl: str
) -> None:
    lines = both(jdbc_probe, proxy, postgres, "statements", options, ssl=ssl)
    assert "multi1|rows=2" in lines and "multi2|count=1" in lines
    assert "warning|00000|hello from plpgsql" in lines and "warning|01000|careful" in lines
    assert any(line.startswith("identity|row|String:pgproxy_upstream") and line.endswith("Boolean:true ~ t")
               for line in lines)
    assert "value|t|String:ü∑🙂 text|ü∑🙂 text|wasNull=false" in lines
    assert "value|b|bytes:00ff10|\\x00ff10|wasNull=false" in lines
    assert "value|num_nan|Double:NaN|NaN|wasNull=false" in lines
    assert "value|n_array|NULL|null|wasNull=true" in lines
    assert "valid|Boolean:true" in lines
    assert ("callable|CALLED Ü" in lines) == (not options)  # pgjdbc's simple mode has no OUT parameters
    large = "".join(f"{g}|{md5(str(g)) * 4}\n" for g in range(1, 100001))  # 100k rows, ~14 MB, in one go
    assert f"large|rows=100000|sha256={sha256(large)}" in lines


@pytest.mark.parametrize(
    ("options", "ssl"),
    [("binaryTransfer=true", "tls"), ("binaryTransfer=false", "tls"), ("prepareThreshold=-1", "tls"),
     ("binaryTransfer=true", "plaintext")],
    ids=["binary-tls", "text-tls", "always-named-tls", "binary-plaintext"],
)
def test_prepared_statement_past_prepare_threshold(
    jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, options: str, ssl: str
) -> None:
    lines = both(jdbc_probe, proxy, postgres, "prepared", options, ssl=ssl)
    statements = [line for line in lines if line.startswith("server statements|row|")]
    # Named server-side statements S_1 (the 13-parameter query) and S_2 exist in the session.
    assert statements[0].startswith("server statements|row|String:S_1 ~ S_1|String:SELECT $1::int4 AS i")
    assert statements[1].startswith("server statements|row|String:S_2 ~ S_2|String:SELECT $1 || ':' || g")
    assert "run9|server_prepare=true" in lines
    assert sum(line.startswith("run9|row|Integer:8999 ~ 8999|") for line in lines) == 1
    binary_rows = [line for line in lines if "[B@(binary bytea)" in line]  # pgjdbc's tell for binary results
    if options == "binaryTransfer=false":
        assert binary_rows == []
    elif options == "prepareThreshold=-1":
        assert len(binary_rows) == 13  # every row of every run
    else:
        assert binary_rows and all(line[:4] in ("run5", "run6", "run7", "run8", "run9") for line in binary_rows)


@pytest.mark.parametrize("options", ["", "reWriteBatchedInserts=true"], ids=["batch", "rewritten"])
def test_batches(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, options: str) -> None:
    lines = both(jdbc_probe, proxy, postgres, "batch", options)
    per_row = "sum=-500" if options else "sum=250"  # rewritten inserts report SUCCESS_NO_INFO (-2) per row
    assert [line for line in lines if line.startswith("batch")] == [
        f"batch{i}|statements=250|{per_row}" for i in range(3)]
    assert "update batch|int[]:[15, 8, 1]" in lines and "statement batch|int[]:[1, 10, 50]" in lines
    assert any(line.startswith("error|23505|batch failed|23505 ERROR: duplicate key") for line in lines)
    assert "summary|row|Long:701 ~ 701|Long:254650 ~ 254650|Long:601 ~ 601|BigDecimal:2101.00 ~ 2101.00|" \
           "Long:351 ~ 351|Long:14 ~ 14" in lines


def test_transaction_with_savepoints(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(jdbc_probe, proxy, postgres, "savepoint")
    committed = [line for line in lines if line.startswith("committed|row|")]
    assert committed == ["committed|row|Integer:1 ~ 1|String:before ~ before",
                         "committed|row|Integer:4 ~ 4|String:after rollback ~ after rollback",
                         "committed|row|Integer:5 ~ 5|String:released ~ released"]


@pytest.mark.parametrize("options", ["", "autosave=always"], ids=["plain", "autosave"])
def test_error_mid_transaction_and_recovery(
    jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, options: str
) -> None:
    lines = both(jdbc_probe, proxy, postgres, "error_recovery", options)
    errors = [line.split("|")[1] for line in lines if line.startswith("error|")]
    aborted = [] if options else ["25P02", "25P02"]  # autosave rolls back to a savepoint instead
    assert errors == ["22012", *aborted, "23505", "42P01", "42601", "22012", "22012", "22012"]
    assert "alive|row|String:alive ~ alive|Long:0 ~ 0" in lines


@pytest.mark.parametrize("options", ["", "binaryTransfer=false"], ids=["binary", "text"])
def test_fetch_size_reads_a_portal_in_batches(
    jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, options: str
) -> None:
    lines = both(jdbc_probe, proxy, postgres, "fetch_size", options)
    big = [line for line in lines if line.startswith("big|Integer:")]
    assert len(big) == 10000 and "big|rows=10000" in lines
    assert big[-1] == "big|Integer:10000|b7a782741f667201b54880c925faec4b|BigDecimal:15000.0|Boolean:false"
    # Part-way through, the server still holds the portal pgjdbc fetches from in Execute batches of 1000.
    assert any(line.startswith("open portals|row|String:C_1 ~ C_1|String:SELECT g, md5") for line in lines)
    interleaved = "".join(line.removeprefix("interleaved|") for line in lines if line.startswith("interleaved|"))
    assert interleaved.rstrip(",").split(",") == (
        [str(v) for g in range(1, 451) for v in (g, -g)] + [str(g) for g in range(451, 501)])
    assert "fetch+max|rows=25" in lines and "autocommit|rows=30" in lines


def test_copy_manager_in_and_out(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(jdbc_probe, proxy, postgres, "copy")
    assert "copy in csv|Long:3000" in lines and "copy in text|Long:2" in lines
    assert any(line.startswith('error|22P02|ERROR: invalid input syntax for type integer: "not a number"')
               for line in lines)
    assert 'error|22P02|ERROR: invalid input syntax for type integer: "bad"; Where: COPY cp, line 2, column id: ' \
           '"bad"' in lines and "copy in transaction|Long:1" in lines
    assert "copy out|COPY cp TO STDOUT|Long:3003" in lines
    assert 'out|2999,name 2999,"quoted, ""2999"" ü",749.75' in lines
    assert "out|5000\ttab\\there\t\\N\t1.5" in lines
    big = "".join(f"{i}\trow {i} {'x' * 80}\n" for i in range(100000))  # ~10 MB each way
    assert "big copy in|Long:100000" in lines and "big copy out|Long:100000" in lines
    assert f"big copy out|same as in=true|sha256={sha256(big)}" in lines
    assert "alive|row|String:alive ~ alive" in lines


@pytest.mark.parametrize("ssl", ["tls", "plaintext"])
def test_cancel_from_another_thread(
    jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, ssl: str
) -> None:
    lines = both(jdbc_probe, proxy, postgres, "cancel", ssl=ssl)
    assert lines == [
        "error|57014|ERROR: canceling statement due to user request",
        "cancelled within 15 s|Boolean:true",
        "usable|row|String:usable ~ usable|Boolean:true ~ t",
        "usable|rows=1",
        "error|57014|ERROR: canceling statement due to user request",  # setQueryTimeout cancels the same way
        "timed out within 15 s|Boolean:true",
        "usable again|row|String:usable ~ usable|Boolean:true ~ t",
        "usable again|rows=1",
        "done|autocommit=true|closed=false",
    ]


def test_settings_in_startup_options(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    options = "options=-c%20statement_timeout=700%20-c%20lock_timeout=1234%20-c%20IntervalStyle=iso_8601"
    lines = both(jdbc_probe, proxy, postgres, "startup_options", options)
    assert lines[:3] == [
        "settings|row|String:700ms ~ 700ms|String:1234ms ~ 1234ms|String:iso_8601 ~ iso_8601|Boolean:true ~ t",
        "settings|rows=1",
        "error|57014|ERROR: canceling statement due to statement timeout",
    ]


@pytest.mark.parametrize("ssl", ["tls", "plaintext"])
def test_large_objects_over_fastpath(
    jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres, ssl: str
) -> None:
    lines = both(jdbc_probe, proxy, postgres, "large_object", ssl=ssl)
    assert lines[:6] == [
        "size|Integer:300000|tell=300000",
        "read at 1000|bytes:1b3a597897b6d5f4133251708faecdec",
        "read last|bytes:c3e201203f5e7d9cbbdaf91837567594",
        "truncated|Integer:100000",
        "read back|Integer:100000|same=true",
        "error|42704|ERROR: large object 1 does not exist",
    ]
    assert "via sql|row|String:hello ü ~ hello ü|Integer:1 ~ 1" in lines


def test_parallel_connections(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(jdbc_probe, proxy, postgres, "parallel")
    expected = []
    for me in range(8):
        counts = [100 + run + me for run in range(40)]
        total = sum(g + ord(md5(f"{g}t{me}")[0]) for count in counts for g in range(1, count + 1))
        expected.append(f"thread {me}|rows={sum(counts)}|sum={total}")
    assert lines[:-1] == expected


def test_database_metadata(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(jdbc_probe, proxy, postgres, "metadata")
    assert "table|NULL|public|jdbc_meta_<tag>|TABLE|probe table" in lines
    columns = [line.split("|")[1:4] for line in lines if line.startswith("column|")]
    assert columns == [["id", "Integer:4", "serial"], ["name", "Integer:12", "varchar"],
                       ["amount", "Integer:2", "numeric"], ["created", "Integer:93", "timestamptz"],
                       ["tags", "Integer:2003", "_text"], ["doc", "Integer:1111", "jsonb"]]
    assert "pk|id|Integer:1|jdbc_meta_<tag>_pkey" in lines
    assert "after rollback found|Boolean:false" in lines


def test_listen_notify_on_one_connection(jdbc_probe: JdbcProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(jdbc_probe, proxy, postgres, "notify")
    assert [line for line in lines if line.startswith("notification|")] == [
        "notification|jdbc_<tag>|hello ü|own pid=true", "notification|jdbc_<tag>|second|own pid=true"]
