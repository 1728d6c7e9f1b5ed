"""`pgproxy audit verify FILE…`: exit 0 and anchors for an intact log; exit 1 naming the first broken link."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgproxy.cli import main
from tests.unit.audit.factories import outcome, sealed_chain, statement


def write_log(path: Path, chain_id: str = "pgproxy-a", count: int = 6) -> list[str]:
    records = []
    for index in range(count // 2):
        intent = statement(f"SELECT {index}")
        records += [intent, outcome(intent)]
    lines = [record.to_json() for record in sealed_chain(records, chain_id)]
    path.write_text("".join(line + "\n" for line in lines))
    return lines


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    code = main(["audit", "verify", *arguments])
    return code, capsys.readouterr().out


def test_an_intact_log_verifies_and_prints_its_anchor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    code, out = run(capsys, str(log))
    assert code == 0 and "6 records in 1 chain(s): OK" in out
    head = json.loads(lines[-1])
    anchor = f"pgproxy-a:{head['seq']}:{head['hash']}"
    assert f"anchor for later checks: {anchor}" in out
    assert run(capsys, str(log), "--anchor", anchor)[0] == 0


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "truncate"])
def test_tampering_is_reported_with_the_first_broken_seq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log)
    head = json.loads(lines[-1])
    anchor = f"pgproxy-a:{head['seq']}:{head['hash']}"
    if tamper == "edit":
        record = json.loads(lines[2])
        record["text"] = "SELECT 'nothing to see'"
        lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    else:
        del lines[-2:]
    log.write_text("".join(line + "\n" for line in lines))
    code, out = run(capsys, str(log), "--anchor", anchor)
    assert code == 1, out
    assert "BROKEN at seq" in out and "FAILED" in out
    if tamper != "truncate":
        assert "BROKEN at seq 3" in out or "BROKEN at seq 4" in out


def test_chains_in_several_files_verify_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "a.jsonl", "pgproxy-a")
    write_log(tmp_path / "b.jsonl", "pgproxy-b")
    code, out = run(capsys, str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
    assert code == 0 and "12 records in 2 chain(s): OK" in out


def test_unreadable_files_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.jsonl").write_text('{"not": "a record"}\n{"x": 1}\n')
    code, out = run(capsys, str(tmp_path / "bad.jsonl"), str(tmp_path / "absent.jsonl"))
    assert code == 1 and "unreadable record" in out and "no such file" in out


def test_a_malformed_anchor_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log)
    assert main(["audit", "verify", str(log), "--anchor", "chain:1:nothex"]) == 2
