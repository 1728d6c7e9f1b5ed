"""What a statement does, as pgproxy's policy sees it: the classifier's output types.

Pure data, no parsing here (that is ``classify``). A ``Statement`` is immutable and carries no
text positions or constants, so one instance can be cached and shared by every execution of the
same statement shape. It must never hold literal values: they may be sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class Category(StrEnum):
    """The kind of effect a statement has. Policies allow, deny or hold statements by category."""

    READ = "read"  # SELECT of allow-listed functions only, SHOW, EXPLAIN (no ANALYZE) of a read
    WRITE = "write"  # INSERT/UPDATE/DELETE/MERGE, SELECT FOR UPDATE, nextval(), large-object writes
    DDL = "ddl"  # CREATE/ALTER/DROP/TRUNCATE/COMMENT/REFRESH …, SELECT INTO
    PRIVILEGE = "privilege"  # GRANT/REVOKE, roles, SET ROLE/SESSION AUTHORIZATION, search_path, RESET/DISCARD ALL
    EXPORT = "export"  # COPY … TO STDOUT
    IMPORT = "import"  # COPY … FROM STDIN
    SESSION = "session"  # SET/RESET of an allow-listed setting, DISCARD PLANS/TEMP, DEALLOCATE
    TRANSACTION = "transaction"  # BEGIN/COMMIT/ROLLBACK/SAVEPOINT …
    PROCEDURAL = "procedural"  # DO, CALL, user-defined or unknown functions, dblink, query_to_xml, fast-path calls
    UTILITY = "utility"  # VACUUM, ANALYZE, LISTEN/NOTIFY, LOCK, pg_terminate_backend(), EXPLAIN ANALYZE of a read
    UNKNOWN = "unknown"  # does not parse, unknown prepared statement name, anything unrecognised


# Categories that change nothing in the database; the read allow-list of a read-only session.
READ_ONLY_CATEGORIES = frozenset({Category.READ, Category.SESSION, Category.TRANSACTION, Category.EXPORT})

# How much a category may do, least first. Where one statement has several natures (a SELECT calling
# nextval(), COPY of a query, several statements in one message) the strictest one names it. The read-only
# categories rank below every other, so a combination is read-only only when every part is. WRITE ranks
# above EXPORT because a read-only session lets exports through; IMPORT above WRITE (bulk writes);
# PROCEDURAL above DDL (code can do anything its role may); PRIVILEGE above that (it changes who the role
# is, or what it may do); UNKNOWN above all (fail closed).
SEVERITY: dict[Category, int] = {
    category: rank
    for rank, category in enumerate(
        (
            Category.READ,
            Category.TRANSACTION,
            Category.SESSION,
            Category.EXPORT,
            Category.UTILITY,
            Category.WRITE,
            Category.IMPORT,
            Category.DDL,
            Category.PROCEDURAL,
            Category.PRIVILEGE,
            Category.UNKNOWN,
        )
    )
}


def strictest_category(*categories: Category) -> Category:
    """The category of highest ``SEVERITY`` (UNKNOWN when none is given: nothing known is not safe)."""
    if not categories:
        return Category.UNKNOWN
    return max(categories, key=SEVERITY.__getitem__)


class Flag(StrEnum):
    DATA_MODIFYING_CTE = "data_modifying_cte"  # WITH x AS (DELETE … RETURNING …) SELECT …
    LOCKING_CLAUSE = "locking_clause"  # SELECT … FOR UPDATE/SHARE
    SELECT_INTO = "select_into"  # SELECT … INTO new_table
    EXPLAIN_ANALYZE = "explain_analyze"  # EXPLAIN ANALYZE runs the explained statement
    COPY_PROGRAM = "copy_program"  # COPY … PROGRAM 'cmd' (refused outright)
    COPY_SERVER_FILE = "copy_server_file"  # COPY … FROM/TO '/server/path' (refused outright)
    SERVER_FILE_FUNCTION = "server_file_function"  # pg_read_file(), lo_import() … (refused outright)
    READ_WRITE_TRANSACTION = "read_write_transaction"  # BEGIN/SET TRANSACTION … READ WRITE
    UNSAFE_FUNCTION = "unsafe_function"  # calls a function outside the read allow-list
    MULTI_STATEMENT = "multi_statement"  # set on the message-level summary only


@dataclass(frozen=True, slots=True, order=True)
class Relation:
    """A table, view or sequence as named in the text; ``schema`` is None when unqualified."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, slots=True)
class StatementSource:
    """A statement's text as the audit log shows it, and its fingerprint (a hash of its normalized text)."""

    text: str
    fingerprint: str | None


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement's classification."""

    category: Category
    command: str  # what the statement is, in PostgreSQL's words: "SELECT", "DROP TABLE", "COPY", "SET" …
    reads: frozenset[Relation] = frozenset()
    writes: frozenset[Relation] = frozenset()
    functions: frozenset[str] = frozenset()  # every function called, "schema.name" or "name", as folded
    unsafe_functions: frozenset[str] = frozenset()  # the subset outside the read allow-list
    flags: frozenset[Flag] = frozenset()
    setting: str | None = None  # SET/RESET/SHOW: which setting ("all" for RESET ALL); lower case
    explained: Statement | None = None  # EXPLAIN: the statement explained
    prepared: Statement | None = None  # PREPARE name AS <prepared>
    prepared_name: str | None = None  # PREPARE / EXECUTE / DEALLOCATE / CREATE TABLE AS EXECUTE: the name
    refusal: str | None = None  # refused whatever the policy says (COPY PROGRAM, server files), and why
    reason: str | None = None  # why the category is UNKNOWN (e.g. the parser's error)
    node: str | None = None  # the parser's node type of the statement ("SelectStmt"), None when unparsed
    # A prepared statement's own text, kept with its classification when auditing (never compared).
    source: StatementSource | None = field(default=None, compare=False, repr=False)
    # A session's own data about a prepared statement (its result masking plan); never compared.
    result: object | None = field(default=None, compare=False, repr=False)

    @property
    def relations(self) -> frozenset[Relation]:
        return self.reads | self.writes

    @property
    def severity(self) -> int:
        return SEVERITY[self.category]


def strictest(statements: Iterable[Statement]) -> Statement | None:
    """The statement that must decide for all of them; None for no statements.

    A refused statement (``refusal`` set) comes first whatever its category, since nothing may undo a
    refusal; then the highest category ``SEVERITY``; the first of equals.
    """
    found: Statement | None = None
    found_rank = (False, -1)
    for statement in statements:
        rank = (statement.refusal is not None, SEVERITY[statement.category])
        if rank > found_rank:
            found, found_rank = statement, rank
    return found


@dataclass(frozen=True, slots=True)
class Classification:
    """Every statement of one Query message or one Parse, in order."""

    statements: tuple[Statement, ...]
    # True when the text could not be split into statements at all (then ``statements`` holds one
    # UNKNOWN statement carrying the parser's reason).
    unparseable: bool = field(default=False)
