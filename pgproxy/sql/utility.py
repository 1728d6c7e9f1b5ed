"""Handlers for utility statements whose category depends on what they name: SET/RESET/SHOW, DISCARD,
transaction control, VACUUM/ANALYZE, and DDL or privilege statements (DROP, ALTER … RENAME/OWNER/SCHEMA,
ALTER TABLE, GRANT/REVOKE, CREATE/ALTER FUNCTION, COMMENT, SECURITY LABEL, CREATE SCHEMA …). DDL that
lends privileges (SECURITY DEFINER, owners, row security) or plants a function or operator named like
an allow-listed built-in is PRIVILEGE.

Settings are judged by name (``settings``); transaction modes by the grammar's own keywords (READ WRITE).
Object types come from the parse tree, never from the text. No I/O.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pgproxy.sql.build import Context, finish
from pgproxy.sql.commands import (
    COMMANDS,
    PRIVILEGE_OBJECTS,
    PRIVILEGE_SUBCOMMANDS,
    RELATION_OBJECTS,
    object_words,
)
from pgproxy.sql.functions import SAFE_FUNCTIONS, SAFE_OPERATORS
from pgproxy.sql.queries import Handler
from pgproxy.sql.settings import setting_category
from pgproxy.sql.statement import Category, Flag, Relation, Statement
from pgproxy.sql.tree import Fields, collect, names_of, unwrap

_TRANSACTION_COMMANDS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
_TWO_PHASE = frozenset({"PREPARE TRANSACTION", "COMMIT PREPARED", "ROLLBACK PREPARED"})
_DISCARD = {
    "DISCARD_ALL": (Category.PRIVILEGE, "DISCARD ALL"),  # includes RESET ALL and SET SESSION AUTHORIZATION DEFAULT
    "DISCARD_PLANS": (Category.SESSION, "DISCARD PLANS"),
    "DISCARD_SEQUENCES": (Category.SESSION, "DISCARD SEQUENCES"),
    "DISCARD_TEMP": (Category.SESSION, "DISCARD TEMP"),
}
_MULTI_SETTINGS = frozenset({"transaction", "session characteristics", "transaction snapshot"})
_ROUTINES = frozenset({"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"})


def _shadows(object_type: str | None, name: str) -> bool:
    """Whether a routine or operator of this name could stand in for an allow-listed built-in.

    PostgreSQL resolves an unqualified call by search path and argument types, so a user-defined
    ``public.lower(varchar)`` can be chosen over ``pg_catalog.lower(text)``: a later "read" would run
    it. Creating, renaming or moving one is therefore a privilege change, not plain DDL.
    """
    if object_type == "OBJECT_OPERATOR":
        return name in SAFE_OPERATORS
    return object_type in _ROUTINES and name in SAFE_FUNCTIONS


def _object_name(value: Any) -> str:
    wrapped = unwrap(value)
    if wrapped is None:
        return ""
    parts = names_of(wrapped[1].get("objname")) if wrapped[0] == "ObjectWithArgs" else ()
    return parts[-1] if parts else ""


def _elements(items: Any) -> list[Fields]:
    return [wrapped[1] for wrapped in map(unwrap, items or ()) if wrapped is not None]


def _read_write(options: Any) -> bool:
    """Whether transaction modes include READ WRITE (transaction_read_only given as 0 by the grammar)."""
    for element in _elements(options):
        if element.get("defname") == "transaction_read_only":
            value = unwrap(element.get("arg"))
            if value is None or value[0] != "A_Const" or value[1].get("ival") != {"ival": 1}:
                return True
    return False


def variable_set(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    how = fields.get("kind")
    if how == "VAR_RESET_ALL":
        return Statement(Category.PRIVILEGE, "RESET", setting="all", node=kind)
    name = str(fields.get("name", "")).lower()
    if how == "VAR_SET_MULTI":
        if name not in _MULTI_SETTINGS:
            return finish(kind, Category.UNKNOWN, "SET", reason=f"SET {name} is not a form pgproxy knows")
        flags = {Flag.READ_WRITE_TRANSACTION} if _read_write(fields.get("args")) else set()
        return finish(kind, Category.TRANSACTION, "SET", flags=flags)
    command = "RESET" if how == "VAR_RESET" else "SET"
    category = setting_category(name)
    reason = f'setting "{name}" is on neither of pgproxy\'s setting lists' if category is Category.UNKNOWN else None
    return finish(kind, category, command, setting=name, reason=reason)


def show(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    return Statement(Category.READ, "SHOW", setting=str(fields.get("name", "")).lower(), node=kind)


def discard(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    category, command = _DISCARD.get(fields.get("target", ""), (Category.UNKNOWN, "DISCARD"))
    setting = "all" if command == "DISCARD ALL" else None
    reason = "unknown DISCARD target" if category is Category.UNKNOWN else None
    return finish(kind, category, command, setting=setting, reason=reason)


def transaction(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    command = _TRANSACTION_COMMANDS.get(fields.get("kind", ""))
    if command is None:
        return finish(kind, Category.UNKNOWN, "?", reason="unknown transaction statement")
    flags = {Flag.READ_WRITE_TRANSACTION} if _read_write(fields.get("options")) else set()
    if command in _TWO_PHASE:
        # A prepared transaction outlives its session and can be finished from any session of the same
        # login, i.e. from any other pgproxy session: a write for whichever work it holds.
        return finish(kind, Category.WRITE, command, flags=flags)
    return finish(kind, Category.TRANSACTION, command, flags=flags)


def vacuum(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    command = "VACUUM" if fields.get("is_vacuumcmd") else "ANALYZE"
    return finish(kind, Category.UTILITY, command, collect(kind, fields))


def _relation(parts: tuple[str, ...]) -> Relation:
    return Relation(parts[-2] if len(parts) > 1 else None, parts[-1])


def _object_relations(object_type: str | None, objects: list[Any]) -> set[Relation]:
    """Relations named by DROP / COMMENT / SECURITY LABEL objects (lists of names)."""
    found: set[Relation] = set()
    for item in objects:
        wrapped = unwrap(item)
        if wrapped is None or wrapped[0] != "List":
            continue
        parts = names_of(wrapped[1].get("items"))
        if object_type == "OBJECT_COLUMN":
            parts = parts[:-1]
        if parts and (object_type in RELATION_OBJECTS or object_type == "OBJECT_COLUMN"):
            found.add(_relation(parts))
    return found


def drop(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    object_type = fields.get("removeType")
    category = Category.PRIVILEGE if object_type in PRIVILEGE_OBJECTS else Category.DDL
    writes = _object_relations(object_type, list(fields.get("objects") or ()))
    return finish(kind, category, f"DROP {object_words(object_type)}", collect(kind, fields), writes=writes)


def comment(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    category, command = COMMANDS[kind]
    writes = _object_relations(fields.get("objtype"), [fields.get("object")])
    return finish(kind, category, command, collect(kind, fields), writes=writes)


def rename(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    renamed = fields.get("renameType")
    named = (
        fields.get("relationType")
        if renamed in ("OBJECT_COLUMN", "OBJECT_ATTRIBUTE", "OBJECT_TABCONSTRAINT")
        else renamed
    )
    privileged = renamed in PRIVILEGE_OBJECTS or _shadows(renamed, str(fields.get("newname", "")))
    category = Category.PRIVILEGE if privileged else Category.DDL
    return finish(kind, category, f"ALTER {object_words(named)}", collect(kind, fields))


def alter_object(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    """ALTER … SET SCHEMA / DEPENDS ON EXTENSION (DDL) and ALTER … OWNER TO (privilege)."""
    object_type = fields.get("objectType")
    moved = kind == "AlterObjectSchemaStmt" and _shadows(object_type, _object_name(fields.get("object")))
    category = Category.PRIVILEGE if kind == "AlterOwnerStmt" or moved else Category.DDL
    return finish(kind, category, f"ALTER {object_words(object_type)}", collect(kind, fields))


def alter_table(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    subcommands = {command.get("subtype") for command in _elements(fields.get("cmds"))}
    category = Category.PRIVILEGE if subcommands & PRIVILEGE_SUBCOMMANDS else Category.DDL
    return finish(kind, category, f"ALTER {object_words(fields.get('objtype'))}", collect(kind, fields))


def grant(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    command = "GRANT" if fields.get("is_grant") else "REVOKE"
    if kind == "GrantRoleStmt":
        command += " ROLE"
    return finish(kind, Category.PRIVILEGE, command, collect(kind, fields))


def _security_definer(options: Any) -> bool:
    for element in _elements(options):
        if element.get("defname") == "security":
            value = unwrap(element.get("arg"))
            if value is None or value[0] != "Boolean" or value[1].get("boolval", False):
                return True
    return False


def function(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    """CREATE/ALTER FUNCTION/PROCEDURE; SECURITY DEFINER lends the owner's privileges: PRIVILEGE."""
    if kind == "CreateFunctionStmt":
        command = "CREATE PROCEDURE" if fields.get("is_procedure") else "CREATE FUNCTION"
        names = names_of(fields.get("funcname"))
        privileged = _security_definer(fields.get("options")) or _shadows("OBJECT_FUNCTION", names[-1] if names else "")
    else:
        command = f"ALTER {object_words(fields.get('objtype'))}"
        privileged = _security_definer(fields.get("actions"))
    category = Category.PRIVILEGE if privileged else Category.DDL
    return finish(kind, category, command, collect(kind, fields))


def define(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    object_type = fields.get("kind")
    names = names_of(fields.get("defnames"))
    category = Category.PRIVILEGE if _shadows(object_type, names[-1] if names else "") else Category.DDL
    return finish(kind, category, f"CREATE {object_words(object_type)}", collect(kind, fields))


def create_schema(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    """CREATE SCHEMA … may carry CREATE TABLE/VIEW/INDEX/SEQUENCE/TRIGGER and GRANT statements."""
    elements = list(fields.get("schemaElts") or ())
    own = {name: value for name, value in fields.items() if name != "schemaElts"}
    inner = []
    for element in elements:
        wrapped = unwrap(element)
        if wrapped is None:
            return finish(kind, Category.UNKNOWN, "CREATE SCHEMA", reason="unreadable CREATE SCHEMA element")
        inner.append(ctx.nested(wrapped[0], wrapped[1], depth))
    # Objects the elements create or change without a schema are created in the new schema.
    schema = fields.get("schemaname")
    if schema:
        inner = [replace(element, writes=_in(schema, element.writes)) for element in inner]
    return finish(kind, Category.DDL, "CREATE SCHEMA", collect(kind, own), inner=inner)


def _in(schema: str, relations: frozenset[Relation]) -> frozenset[Relation]:
    return frozenset(Relation(relation.schema or schema, relation.name) for relation in relations)


def fixed(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    category, command = COMMANDS[kind]
    return finish(kind, category, command, collect(kind, fields))


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(COMMANDS, fixed),
    "VariableSetStmt": variable_set,
    "VariableShowStmt": show,
    "DiscardStmt": discard,
    "TransactionStmt": transaction,
    "VacuumStmt": vacuum,
    "DropStmt": drop,
    "CommentStmt": comment,
    "SecLabelStmt": comment,
    "RenameStmt": rename,
    "AlterObjectSchemaStmt": alter_object,
    "AlterObjectDependsStmt": alter_object,
    "AlterOwnerStmt": alter_object,
    "AlterTableStmt": alter_table,
    "GrantStmt": grant,
    "GrantRoleStmt": grant,
    "CreateFunctionStmt": function,
    "AlterFunctionStmt": function,
    "DefineStmt": define,
    "CreateSchemaStmt": create_schema,
}
