"""psql through pgproxy: its output must equal the output of the same script run directly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration
_PID = re.compile(r"PID \d+")


def psql(conninfo: str, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-X", "-v", "VERBOSITY=default", *flags, conninfo],
        input=script, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "psql-test"},
    )


def both(proxy: RunningProxy, postgres: RealPostgres, script: str, *flags: str) -> tuple[str, str]:
    direct = psql(postgres.dsn(UPSTREAM_ROLE), script, *flags)
    proxied = psql(proxy.conninfo(), script, *flags)
    assert proxied.returncode == direct.returncode, proxied.stderr
    # Two sessions have two backends: only the backend pid in notifications may differ.
    assert _PID.sub("PID n", proxied.stderr) == _PID.sub("PID n", direct.stderr)
    assert _PID.sub("PID n", proxied.stdout) == _PID.sub("PID n", direct.stdout)
    return proxied.stdout, proxied.stderr


def test_simple_protocol_results_match(proxy: RunningProxy, postgres: RealPostgres) -> None:
    out, _ = both(proxy, postgres, """
        SELECT 1 AS one, 'two'::text AS two, NULL::int AS nothing, now()::date = current_date AS today;
        SELECT g, g * 2 AS doubled, repeat('x', g) FROM generate_series(1, 50) AS g;
        SELECT '{"a": [1, 2]}'::jsonb -> 'a' AS arr, ARRAY[1,2,3] AS ints, 1.5::numeric(4,2) AS num;
        SELECT E'\\\\x00ff'::bytea AS bytes, 'ü∑🙂'::text AS unicode;
        SELECT 1 WHERE false;
        ;
    """)
    assert "(50 rows)" in out and "🙂" in out and "(0 rows)" in out


def test_multi_statement_string_in_one_query(proxy: RunningProxy, postgres: RealPostgres) -> None:
    out, _ = both(proxy, postgres, "", "-c",
                  "CREATE TEMP TABLE m(x int); INSERT INTO m VALUES (1),(2); SELECT sum(x) FROM m")
    assert out.strip().endswith("(1 row)")


def test_errors_mid_transaction_and_recovery(proxy: RunningProxy, postgres: RealPostgres) -> None:
    _, err = both(proxy, postgres, """
        BEGIN;
        SELECT 1;
        SELECT 1/0;
        SELECT 2;
        ROLLBACK;
        SELECT 'after' AS state;
        SELECT * FROM no_such_table;
        SELECT 'still alive' AS state;
    """)
    assert "division by zero" in err
    assert "current transaction is aborted" in err
    assert 'relation "no_such_table" does not exist' in err


def test_notices_and_notifications_are_relayed(proxy: RunningProxy, postgres: RealPostgres) -> None:
    _, err = both(proxy, postgres, """
        DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; RAISE WARNING 'careful'; END $$;
        SET client_min_messages = debug1;
        LISTEN psql_channel;
        NOTIFY psql_channel, 'payload';
    """)
    assert "NOTICE:  hello from plpgsql" in err and "WARNING:  careful" in err


def test_copy_both_ways(proxy: RunningProxy, postgres: RealPostgres, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("".join(f"{i},name {i},\"quoted, {i}\"\n" for i in range(2000)))
    target = tmp_path / "out.csv"
    script = f"""
        CREATE TEMP TABLE c(id int, name text, note text);
        \\copy c FROM '{source}' WITH (FORMAT csv)
        SELECT count(*), sum(id) FROM c;
        \\copy (SELECT * FROM c ORDER BY id) TO '{target}' WITH (FORMAT csv)
        \\copy c FROM stdin
        9001\tfrom stdin\tx
        \\.
        SELECT * FROM c WHERE id > 9000;
    """.replace("\n        ", "\n")
    out, _ = both(proxy, postgres, script)
    assert "2000 | 1999000" in out
    assert target.read_text() == source.read_text()
    assert "from stdin" in out


def test_copy_from_stdin_error_keeps_session_usable(proxy: RunningProxy, postgres: RealPostgres) -> None:
    _, err = both(proxy, postgres, """
CREATE TEMP TABLE e(id int);
\\copy e FROM stdin
1
not a number
\\.
SELECT 'alive' AS state, count(*) FROM e;
""")
    assert "invalid input syntax for type integer" in err
