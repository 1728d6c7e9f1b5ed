"""PreparedStatements follows the server's rules for statement names, answer by answer."""

from __future__ import annotations

from pgproxy.gate.prepared import PreparedStatements
from pgproxy.sql.statement import Category, Statement

READ = Statement(Category.READ, "SELECT")
WRITE = Statement(Category.WRITE, "INSERT")


def prepare(name: str, inner: Statement) -> Statement:
    return Statement(inner.category, "PREPARE", prepared=inner, prepared_name=name)


def test_named_parse_is_visible_in_its_batch_and_confirmed_by_parse_complete() -> None:
    table = PreparedStatements()
    table.sent_parse("s1", READ)
    assert table.lookup("s1").statement is READ and not table.lookup("s1").must_wait
    table.sent_sync()
    table.parse_complete()
    table.ready()
    assert table.idle
    assert table.lookup("s1").statement is READ and not table.lookup("s1").must_wait


def test_use_in_a_later_batch_before_confirmation_must_wait() -> None:
    table = PreparedStatements()
    table.sent_parse("s1", READ)
    table.sent_sync()
    assert table.lookup("s1").must_wait
    table.parse_complete()
    assert not table.lookup("s1").must_wait
    assert table.lookup("s1").statement is READ


def test_failed_parse_leaves_no_definition() -> None:
    table = PreparedStatements()
    table.sent_parse("s1", READ)
    table.sent_sync()
    table.error()
    table.ready()
    assert table.lookup("s1").statement is None
    assert table.idle


def test_a_named_statement_is_never_redefined() -> None:
    """Parse of an existing name fails upstream (42P05): the old meaning stays."""
    table = PreparedStatements()
    table.sent_parse("s1", READ)
    table.sent_sync()
    table.parse_complete()
    table.ready()
    table.sent_parse("s1", WRITE)
    assert table.lookup("s1").statement is READ  # by the server's rule, the redefinition cannot succeed
    table.sent_sync()
    table.error()
    table.ready()
    assert table.lookup("s1").statement is READ


def test_skipped_close_keeps_the_statement_and_a_pipelined_redefinition_waits() -> None:
    """The attack: an error makes the server skip Close, then a re-Parse of the name fails as a duplicate."""
    table = PreparedStatements()
    table.sent_parse("s1", READ)
    table.sent_sync()
    table.parse_complete()
    table.ready()
    # batch 1: something that fails, then Close s1 (skipped by the server)
    table.sent_execute("")
    table.sent_close_statement("s1")
    table.sent_sync()
    # batch 2: redefine s1; batch 3: use it
    table.sent_parse("s1", WRITE)
    table.sent_sync()
    assert table.lookup("s1").must_wait  # it depends on batches the server has not answered
    table.error()  # the Execute of batch 1 fails: Close is skipped
    table.ready()
    table.error()  # the redefinition fails: duplicate name
    table.ready()
    found = table.lookup("s1")
    assert found.statement is READ and not found.must_wait


def test_close_confirmed_then_redefinition_succeeds() -> None:
    table = PreparedStatements()
    table.sent_parse("s1", READ)
    table.sent_sync()
    table.parse_complete()
    table.ready()
    table.sent_close_statement("s1")
    table.sent_parse("s1", WRITE)
    assert table.lookup("s1").statement is WRITE
    table.sent_sync()
    table.close_complete()
    table.parse_complete()
    table.ready()
    assert table.lookup("s1").statement is WRITE


def test_unnamed_statement_is_replaced_and_lost_when_its_parse_fails() -> None:
    table = PreparedStatements()
    table.sent_parse("", READ)
    table.sent_sync()
    table.parse_complete()
    table.ready()
    table.sent_parse("", WRITE)
    assert table.lookup("").statement is WRITE
    table.sent_sync()
    table.error()
    table.ready()
    assert table.lookup("").statement is None


def test_sql_prepare_in_a_query_counts_command_completes() -> None:
    table = PreparedStatements()
    table.sent_query((READ, prepare("p1", READ), prepare("p2", WRITE)))
    assert table.lookup("p1").statement is READ
    table.command_complete()  # SELECT
    table.command_complete()  # PREPARE p1
    table.error()  # PREPARE p2 fails
    table.ready()
    assert table.lookup("p1").statement is READ
    assert table.lookup("p2").statement is None


def test_sql_prepare_through_extended_execute() -> None:
    table = PreparedStatements()
    table.sent_parse("", prepare("p1", READ))
    table.sent_bind("", prepare("p1", READ))
    table.sent_execute("")
    table.sent_sync()
    table.parse_complete()
    table.command_complete()
    table.ready()
    assert table.lookup("p1").statement is READ


def test_deallocate_all_forgets_everything() -> None:
    table = PreparedStatements()
    table.sent_parse("a", READ)
    table.sent_parse("b", READ)
    table.sent_sync()
    table.parse_complete()
    table.parse_complete()
    table.ready()
    table.sent_query((Statement(Category.SESSION, "DEALLOCATE ALL"),))
    assert table.lookup("a").statement is None
    table.command_complete()
    table.ready()
    assert table.lookup("a").statement is None and table.lookup("b").statement is None


def test_error_before_sync_skips_until_it_arrives() -> None:
    table = PreparedStatements()
    table.sent_parse("a", READ)
    table.error()  # the Parse fails before the client has sent Sync
    table.sent_parse("b", READ)  # skipped by the server
    table.sent_sync()
    table.ready()
    assert table.lookup("a").statement is None
    assert table.lookup("b").statement is None
    assert table.idle


def test_sync_during_copy_in_is_ignored() -> None:
    table = PreparedStatements()
    table.sent_query((Statement(Category.IMPORT, "COPY"),))
    table.copy_in_started()
    table.sent_sync()  # ignored by the server during COPY FROM STDIN
    table.sent_copy_end()
    table.command_complete()
    table.ready()
    assert table.idle


def test_unexpected_answer_forgets_every_name() -> None:
    table = PreparedStatements()
    table.sent_parse("a", READ)
    table.sent_sync()
    table.parse_complete()
    table.ready()
    table.close_complete()  # nothing was waiting for it
    assert table.lookup("a").statement is None


def test_syncs_pipelined_ahead_of_copy_in_are_not_waited_for() -> None:
    """libpq's extended COPY FROM STDIN sends Sync before the server's CopyInResponse; the server ignores it."""
    table = PreparedStatements()
    table.sent_parse("", Statement(Category.IMPORT, "COPY"))
    table.sent_bind("", Statement(Category.IMPORT, "COPY"))
    table.sent_execute("")
    table.sent_sync()  # ignored by the server: it arrives during COPY FROM STDIN
    table.parse_complete()
    table.copy_in_started()
    table.sent_copy_end()
    table.sent_sync()  # this one counts
    table.command_complete()
    table.ready()
    assert table.idle
    table.sent_parse("a", READ)
    table.sent_sync()
    table.parse_complete()
    table.ready()
    assert table.lookup("a").statement is READ  # still in step: the name was confirmed


def test_copy_end_pipelined_before_copy_in_response() -> None:
    table = PreparedStatements()
    table.sent_query((Statement(Category.IMPORT, "COPY"),))
    table.sent_sync()
    table.sent_copy_end()  # the whole COPY was pipelined: Sync, then CopyDone, then a Sync that counts
    table.sent_sync()
    table.copy_in_started()
    table.command_complete()
    table.ready()  # the Query's ReadyForQuery
    table.ready()  # the last Sync's
    assert table.idle
