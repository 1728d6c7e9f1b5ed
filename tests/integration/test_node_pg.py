"""node-postgres through pgproxy: the probe in tests/drivers/node runs each scenario once straight against
PostgreSQL (as pgproxy's upstream role) and once through pgproxy, and the two printouts must be equal.

The probe prints one line per row or value; names it creates are unique per run and printed as ``<tag>``,
and backend pids are only ever compared, never printed, so nothing needs normalising. ``npm ci`` installs
the locked ``pg``, ``pg-cursor`` and ``pg-copy-streams`` into tests/drivers/node once per session.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.compare import unique_name
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres
from tests.support.probe_runs import side_by_side
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration

NODE_PROJECT = Path(__file__).resolve().parents[1] / "drivers" / "node"


@dataclass(frozen=True)
class NodeProbe:
    node: str

    def start(self, config: dict[str, Any], scenario: str, *, hold: bool = False) -> subprocess.Popen[bytes]:
        """Start a run; with ``hold`` it keeps its session open after the scenario until told on stdin."""
        env = {**os.environ, "TZ": "UTC", "NODE_NO_WARNINGS": "1"} | ({"PROBE_HOLD": "1"} if hold else {})
        return subprocess.Popen(
            [self.node, str(NODE_PROJECT / "probe.js"), json.dumps(config), scenario, unique_name("probe")],
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=NODE_PROJECT, env=env,
        )


@pytest.fixture(scope="session")
def node_probe() -> NodeProbe:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed: apt-get install nodejs npm (.ci/run does)"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_PROJECT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return NodeProbe(node)


def both(probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres, scenario: str, *, tls: bool = True,
         **config: Any) -> list[str]:
    """The scenario's output lines, after checking that the direct and the proxied run printed the same.

    The two runs go side by side (two node processes): they share nothing but the server.
    """
    direct_config = {"host": postgres.host, "port": postgres.port, "user": UPSTREAM_ROLE,
                     "database": TEST_DATABASE, **config}
    subject = unique_name("node")
    proxied_config = {"host": "127.0.0.1", "port": proxy.port, "user": "agent", "password": proxy.idp.mint(subject),
                      "database": TEST_DATABASE, "ssl": tls, **config}
    lines, held = side_by_side(
        lambda: probe.start(direct_config, scenario),
        lambda: probe.start(proxied_config, scenario, hold=True),
        proxy, subject, scenario,
    )
    assert lines[-1] == "done|row|done=number:1"
    # (Sessions the scenario opened besides its own may still be closing: they must be idle too.)
    assert held and set(held) == {(0, "I")}, f"pgproxy's relay state for the held session: {held}"
    return lines


TRANSPORTS = [pytest.param(True, id="tls"), pytest.param(False, id="plaintext")]


@pytest.mark.parametrize("tls", TRANSPORTS)
def test_simple_queries_with_many_types(
    node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres, tls: bool
) -> None:
    lines = both(node_probe, proxy, postgres, "simple", tls=tls)
    row = next(line for line in lines if line.startswith("types|row|"))
    for value in ("i8=string:9223372036854775807", "t=string:ü∑🙂 text", "b=Buffer:00ff10", "num_nan=string:NaN",
                  "tstz=Date:2024-02-29T07:44:15.123Z", "a_int=[number:1, NULL, number:3]", "n_array=NULL",
                  'jb=Object:{"a":"x","z":1}', "f8_inf=number:-Infinity"):
        assert value in row.split("|"), value
    assert [line for line in lines if line.startswith("multi") and "|command=" in line] == [
        "multi0|command=CREATE|rowCount=null", "multi1|command=INSERT|rowCount=5",
        "multi2|command=UPDATE|rowCount=2", "multi3|command=SELECT|rowCount=5", "multi4|command=DELETE|rowCount=1"]
    assert "notice|NOTICE|00000|hello from plpgsql" in lines and "notice|WARNING|01000|careful" in lines
    assert ("identity|row|current_user=string:pgproxy_upstream|current_database=string:pgproxy_test|"
            "enc=string:UTF8|ds=string:ISO, MDY|pid_matches=boolean:true") in lines
    assert sum(line.startswith("large|row|") for line in lines) == 300
    assert "error|22012|division by zero" in lines and "after|row|state=string:alive" in lines


def test_parameterized_queries(node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(node_probe, proxy, postgres, "params")
    row = next(line for line in lines if line.startswith("params|row|")).split("|")
    for value in ("i8=string:-9223372036854775808", "t=string:ü∑🙂 'quoted' \"double\"", "b=Buffer:0001feff",
                  "tstz=Date:2000-01-02T03:04:05.006Z", "tstz2=Date:2000-01-02T01:04:05.000Z",
                  'jb=Object:{"k":[1,"v",null]}', "ai=[[number:1, number:2], [number:3, NULL]]", "nothing=NULL",
                  'at=[string:x, string:y,z, string:"q", NULL]'):
        assert value in row, value
    assert [line for line in lines if line.startswith("error|")] == [
        'error|08P01|bind message supplies 1 parameters, but prepared statement "" requires 2',
        'error|22P02|invalid input syntax for type integer: "not a number"',
        'error|42601|syntax error at or near "SELEC"']
    assert sum(line.startswith("rows option|row|") for line in lines) == 7


@pytest.mark.parametrize("tls", TRANSPORTS)
def test_named_prepared_statements_executed_repeatedly(
    node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres, tls: bool
) -> None:
    lines = both(node_probe, proxy, postgres, "prepared", tls=tls)
    assert "series9|row|g=number:1|label=string:v91|scaled=string:2.25" in lines
    assert [line.split("|")[0] for line in lines if line.startswith("error|") or "|command=" in line][10:20] == [
        "error", "divide1", "divide2", "error", "divide4", "divide5", "error", "divide7", "divide8", "error"]
    names = [line.split("|")[2] for line in lines if line.startswith("server statements|row|")]
    assert names == ["name=string:arr_<tag>", "name=string:divide_<tag>", "name=string:series_<tag>"]


def test_transaction_with_error_and_rollback(
    node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres
) -> None:
    lines = both(node_probe, proxy, postgres, "transaction")
    assert [line.split("|")[1] for line in lines if line.startswith("error|")] == [
        "22012", "25P02", "25P02", "23505", "42P01"]
    assert "after rollback|row|count=string:0" in lines
    assert [line for line in lines if line.startswith("committed|row|")] == [
        "committed|row|id=number:1|note=string:kept", "committed|row|id=number:2|note=string:after savepoint"]
    assert "notice|WARNING|25P01|there is no transaction in progress" in lines


def test_cursor_reads_in_batches(node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(node_probe, proxy, postgres, "cursor")
    rows = [line for line in lines if line.startswith("row|")]
    assert len(rows) == 10000
    assert rows[-1] == "row|number:10000|b7a782741f667201b54880c925faec4b|boolean:false"
    assert "batches|1000,1000,1000,1000,1000,1000,1000,1000,1000,1000,0|total=10000" in lines
    # Between two reads the portal is suspended mid-query: the backend has not been back to idle.
    assert "open portals|row|state=string:active" in lines
    assert "read 1|[[61]]" in lines and "read 5|[]" in lines
    assert 'early|[{"g":1},{"g":2},{"g":3},{"g":4},{"g":5}]' in lines
    assert [line for line in lines if line.startswith(("failing read", "error"))] == [
        *["failing read|number:1000"] * 4, "error|22012|division by zero"]
    assert "after|row|state=string:alive" in lines


def test_copy_from_and_to(node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(node_probe, proxy, postgres, "copy")
    assert "copy from|rowCount=3000" in lines and "copy from text|rowCount=2" in lines
    assert 'error|22P02|invalid input syntax for type integer: "not a number"' in lines
    assert "after copy|row|n=string:3002|ids=string:4508501|amounts=string:2401|total=string:900001.50" in lines
    assert "copy to|COPY cp TO STDOUT|rowCount=3002" in lines
    assert 'out|2999,name 2999,"quoted, ""2999"" ü",749.75' in lines
    assert "out|5001\tbackslash \\\\\tx\t\\N" in lines
    big = "".join(f"{i}\trow {i} {'x' * 80}\n" for i in range(100000))  # ~10 MB each way
    assert "big copy from|rowCount=100000" in lines
    assert f"big copy to|rowCount=100000|same as in=true|sha256={hashlib.sha256(big.encode()).hexdigest()}" in lines


def test_listen_notify_between_two_clients(
    node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres
) -> None:
    lines = both(node_probe, proxy, postgres, "notify")
    assert lines[:5] == [
        'notification|node_<tag>|"hello ü"|from sender=true',
        'notification|node_<tag>|"second"|from sender=true',
        'notification|node_<tag>|"in a transaction"|from sender=true',
        'notification|node_<tag>|""|from sender=true',
        "sender pid matches|boolean:true",
    ]


@pytest.mark.parametrize("tls", TRANSPORTS)
def test_statement_timeout_and_cancel(
    node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres, tls: bool
) -> None:
    lines = both(node_probe, proxy, postgres, "cancel", tls=tls)
    # statement_timeout is a startup parameter of its own; the others come in the startup packet's options.
    assert "timeout setting|row|st=string:500ms|lt=string:1234ms|style=string:iso_8601" in lines
    assert [line for line in lines if line.startswith(("error|", "after", "timed", "cancelled"))] == [
        "error|57014|canceling statement due to statement timeout",
        "timed out within 15 s|boolean:true",
        "after timeout|command=SELECT|rowCount=1",
        "after timeout|field|state|type=25|format=text",
        "after timeout|row|state=string:usable",
        "error|57014|canceling statement due to user request",
        "cancelled within 15 s|boolean:true",
        "after cancel|command=SELECT|rowCount=1",
        "after cancel|field|state|type=25|format=text",
        "after cancel|field|same_backend|type=16|format=text",
        "after cancel|row|state=string:usable|same_backend=boolean:true",
    ]


def test_pipeline_mode(node_probe: NodeProbe, proxy: RunningProxy, postgres: RealPostgres) -> None:
    lines = both(node_probe, proxy, postgres, "pipelined")
    assert "pipelined1|row|doubled=number:42" in lines and "error|22012|division by zero" in lines
    assert "pipelined4|row|named=string:y" in lines and "pipelined5|row|g=number:3" in lines
