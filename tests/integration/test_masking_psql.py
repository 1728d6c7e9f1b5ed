"""Column masking seen through psql: simple-protocol queries (one Query with several statements too),
``\\copy … TO STDOUT`` in text and CSV, binary COPY, and refusals printed with their reason."""

from __future__ import annotations

import csv
import io
import subprocess

import pytest

from tests.support.masking import ROWS, MaskedSchema, email, masked_row, partial

pytestmark = pytest.mark.integration


def psql(masked: MaskedSchema, *commands: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    arguments = [part for command in commands for part in ("-c", masked.q(command))]
    return subprocess.run(
        ["psql", "-X", "-A", "-t", "-F", "|", masked.proxy.conninfo(token or masked.agent()), *arguments],
        capture_output=True, text=True, timeout=60, check=False,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


NULL = "\\N"  # COPY text format's NULL


def cell(value: object) -> str:
    return "" if value is None else str(value)


def test_simple_queries_show_masked_values(masked: MaskedSchema) -> None:
    done = psql(masked, "SELECT id, email, phone FROM S.customers ORDER BY id;"
                        " SELECT upper(email) FROM S.customers ORDER BY id")
    assert done.returncode == 0, done.stderr
    expected = [f"{row[0]}|{cell(email(row[2]))}|{cell(partial(row[3]))}" for row in ROWS]
    expected += ["" if row[2] is None else "***" for row in ROWS]
    assert lines(done.stdout) == [line for line in expected if line]


def test_copy_out_text_and_csv(masked: MaskedSchema) -> None:
    text = psql(masked, "COPY (SELECT id, email, note FROM S.customers ORDER BY id) TO STDOUT")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        f"{row[0]}\t{email(row[2]) or NULL}\t{'[hidden]' if row[7] is not None else NULL}" for row in ROWS
    ]
    done = psql(masked, "\\copy S.customers TO STDOUT WITH (FORMAT csv, HEADER)")
    assert done.returncode == 0, done.stderr
    read = list(csv.reader(io.StringIO(done.stdout)))
    assert read[0] == ["id", "name", "email", "phone", "token", "score", "card", "note", "ssn"]
    direct = masked.direct("SELECT * FROM customers ORDER BY id")
    by_id = {int(row[0]): row for row in read[1:]}
    for row in direct:
        want = masked_row(row)
        got = by_id[row[0]]
        assert got[2] == cell(want[2]) and got[3] == cell(want[3]) and got[7] == cell(want[7])
        assert got[5] == cell(want[5]) and got[6] == "" and got[8] == cell(want[8])
        assert got[4] == cell(want[4])


def test_binary_copy_carries_no_original_value(masked: MaskedSchema) -> None:
    done = subprocess.run(
        ["psql", "-X", masked.proxy.conninfo(masked.agent()), "-c",
         masked.q("COPY S.customers (id, email, phone, note) TO STDOUT (FORMAT binary)")],
        capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"PGCOPY\n\xff\r\n\x00")
    for row in ROWS:
        for secret in (row[2], row[3], row[7]):
            if secret is not None:
                assert secret.encode() not in done.stdout
    assert b"***@example.com" in done.stdout and b"[hidden]" in done.stdout


def test_refusals_name_the_reason(masked: MaskedSchema) -> None:
    done = psql(masked, "SELECT c FROM S.customers c", "SELECT id FROM S.customers WHERE ssn = '123-45-6789'",
                "SELECT 'alive'")
    assert "whole-row" in done.stderr
    assert "filters, joins, groups, orders or computes with masked column" in done.stderr
    assert lines(done.stdout) == ["alive"]


def test_exempt_identities_see_real_values_through_psql(masked: MaskedSchema) -> None:
    done = psql(masked, "SELECT email FROM S.customers ORDER BY id", token=masked.dba())
    assert lines(done.stdout) == [row[2] for row in ROWS if row[2] is not None]
