"""What a fast-path FunctionCall message does, known from the function's OID alone.

FunctionCall names its function by OID, not by name, so the classifier's name lists cannot see it.
Drivers use it for large objects only (libpq's lo_* API, pgjdbc's LargeObjectManager), whose OIDs are
fixed in PostgreSQL's catalog (pg_proc.dat assigns them, and they have not changed across releases).
Those calls are writes; lo_import/lo_export touch the server's files and are refused like their SQL
forms; every other OID is refused, since pgproxy cannot tell what it runs. Pure data.
"""

from __future__ import annotations

from pgproxy.sql.statement import Category, Flag, Statement

# Large-object functions by their fixed catalog OIDs.
LARGE_OBJECT_FUNCTIONS: dict[int, str] = {
    715: "lo_create",
    952: "lo_open",
    953: "lo_close",
    954: "loread",
    955: "lowrite",
    956: "lo_lseek",
    957: "lo_creat",
    958: "lo_tell",
    964: "lo_unlink",
    1004: "lo_truncate",
    3170: "lo_lseek64",
    3171: "lo_tell64",
    3172: "lo_truncate64",
    3457: "lo_from_bytea",
    3458: "lo_get",
    3459: "lo_get",
    3460: "lo_put",
}
SERVER_FILE_FUNCTIONS: dict[int, str] = {764: "lo_import", 767: "lo_import", 765: "lo_export"}


def fast_path_statement(oid: int) -> Statement:
    """The classification of a FunctionCall of the function with this OID."""
    name = LARGE_OBJECT_FUNCTIONS.get(oid)
    if name is not None:
        return Statement(
            Category.WRITE,
            "FUNCTION CALL",
            functions=frozenset({name}),
            unsafe_functions=frozenset({name}),
            flags=frozenset({Flag.UNSAFE_FUNCTION}),
        )
    name = SERVER_FILE_FUNCTIONS.get(oid)
    if name is not None:
        return Statement(
            Category.PROCEDURAL,
            "FUNCTION CALL",
            functions=frozenset({name}),
            unsafe_functions=frozenset({name}),
            flags=frozenset({Flag.SERVER_FILE_FUNCTION}),
            refusal=f"{name} reads or writes files on the database server; pgproxy never forwards it",
        )
    label = f"oid:{oid}"
    return Statement(
        Category.PROCEDURAL,
        "FUNCTION CALL",
        functions=frozenset({label}),
        unsafe_functions=frozenset({label}),
        flags=frozenset({Flag.UNSAFE_FUNCTION}),
        refusal=f"fast-path call of function {oid}: pgproxy forwards fast-path calls of large-object functions only",
    )
