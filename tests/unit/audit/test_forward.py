"""Forwarders write each durable record as its exact JSON line."""

from __future__ import annotations

import io

from pgproxy.audit import AuditRecord, Chain
from pgproxy.audit.forward import StreamForwarder, SyslogForwarder, build_forwarder
from tests.unit.audit.factories import statement


def test_stream_forwarder_writes_one_json_line_per_record_that_parses_back() -> None:
    sealed = Chain("pgproxy-a").seal_all([statement("SELECT 1"), statement("SELECT 'a\nb'")])
    out = io.StringIO()
    StreamForwarder(out)(sealed)
    lines = out.getvalue().splitlines()
    assert lines == [record.to_json() for record in sealed]
    assert [AuditRecord.from_json(line) for line in lines] == sealed


def test_the_setting_names_the_forwarder() -> None:
    assert build_forwarder("none", "/dev/log") is None
    assert isinstance(build_forwarder("stdout", "/dev/log"), StreamForwarder)
    syslog = build_forwarder("syslog", "127.0.0.1:514")
    assert isinstance(syslog, SyslogForwarder)
    syslog.close()
