"""Column lineage of one SQL statement: which masked columns each output column carries, and how.

`trace` parses a PostgreSQL statement with sqlglot, resolves every table through the session's
search_path against the catalogue the caller supplies, qualifies every column, then walks the query
scope by scope (`lineage_walk`) to tell, per output position, the masked columns whose values it
carries unchanged (*plain*) or computes from (*derived*), and which masked columns are read outside
the output list (*elsewhere*, with the filtering/ordering subset in *predicates*).

It must fail closed: whatever it cannot trace with certainty (unknown relations or columns, whole-row
references to rows holding masked columns, functions that run SQL text, unexpandable stars, opaque
statements) raises `Unresolvable`, and the caller refuses the statement. It never executes anything,
never performs I/O, and never puts data values into an error message.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

import sqlglot
from pglast import parser as pg_parser
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.qualify_columns import qualify_columns, validate_qualify_columns
from sqlglot.optimizer.qualify_tables import qualify_tables
from sqlglot.schema import MappingSchema

from pgproxy.masking.lineage_dml import trace_dml
from pgproxy.masking.lineage_inner import inner_query, plain_identifiers
from pgproxy.masking.lineage_types import Lineage, OutputSources, TableColumns, Unresolvable
from pgproxy.masking.lineage_walk import QueryWalker

__all__ = ["Lineage", "OutputSources", "TableColumns", "Unresolvable", "inner_query", "trace"]

# Marks tables qualify_tables found unqualified (not CTE references); resolved via search_path below.
_UNQUALIFIED = "\x01pgproxy_unqualified"

# Functions that run SQL given as text or read relations named by a string: their data flow is
# invisible to a tree walk, so their mere presence refuses the statement.
_NAMEDATALEN = 63
_OPAQUE_PREFIXES = (
    "query_to_xml",
    "table_to_xml",
    "cursor_to_xml",
    "schema_to_xml",
    "database_to_xml",
    "dblink",
    "pg_read_",
)
_OPAQUE_NAMES = frozenset({"ts_stat", "ts_rewrite", "query_to_xmlschema", "query_to_xml_and_xmlschema"})


def trace(sql: str, tables: TableColumns, search_path: Sequence[str], masked: Collection[str]) -> Lineage:
    masked = frozenset(masked)
    statement = _parse(sql)
    for node in statement.walk():
        if isinstance(node, exp.Command):
            raise Unresolvable("statement form not understood")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.key).lower()
            if name in _OPAQUE_NAMES or name.startswith(_OPAQUE_PREFIXES):
                raise Unresolvable(f"function {name} reads data the proxy cannot trace")
        if isinstance(node, exp.Identifier) and len(node.name.encode()) > _NAMEDATALEN:
            # PostgreSQL truncates longer names, so two spellings sqlglot keeps apart could meet.
            raise Unresolvable("identifier longer than 63 bytes")
        if isinstance(node, exp.Var) and any(node.name.lower() == key.rsplit(".", 1)[-1].lower() for key in masked):
            raise Unresolvable(f"cannot tell what {node.name} refers to")

    stored = False  # CREATE TABLE AS / SELECT INTO: every output is written to a table, not returned
    if isinstance(statement, exp.Create) and isinstance(statement.expression, exp.Query):
        statement, stored = statement.expression, True
    elif isinstance(statement, exp.Select) and statement.args.get("into") is not None:
        statement.set("into", None)
        stored = True
    if isinstance(statement, exp.Values):
        statement = _select_from_values(statement)
    if not isinstance(statement, (exp.Query, exp.DML)):
        raise Unresolvable("statement type not supported for masking")

    statement = normalize_identifiers(statement, dialect="postgres")
    statement = qualify_tables(statement, db=_UNQUALIFIED, dialect="postgres")
    columns = _resolve_tables(statement, tables, search_path, masked)

    if isinstance(statement, exp.DML):
        return trace_dml(statement, columns, masked)

    schema = MappingSchema(
        {s: {t: dict.fromkeys(cols, "text") for (s2, t), cols in columns.items() if s2 == s} for s, _ in columns},
        dialect="postgres",
        normalize=False,
    )
    try:
        statement = qualify_columns(statement, schema, expand_alias_refs=True, expand_stars=True, dialect="postgres")
        validate_qualify_columns(statement)
    except SqlglotError as exc:
        raise Unresolvable(f"cannot resolve the statement's columns: {_reason(exc)}") from None
    except Exception:  # assertion and type errors inside sqlglot on shapes it does not support
        raise Unresolvable("cannot resolve the statement's columns") from None
    try:
        walker = QueryWalker(statement, columns, masked)
        outputs = walker.run()
    except Unresolvable:
        raise
    except Exception:  # a tree shape nobody anticipated: refuse rather than guess
        raise Unresolvable("statement shape not supported for masking") from None
    tables_read = frozenset(columns)
    if stored:
        everything = frozenset().union(*(o.plain | o.derived for o in outputs))
        return Lineage((), frozenset(walker.elsewhere) | everything, frozenset(walker.predicates), tables_read)
    return Lineage(outputs, frozenset(walker.elsewhere), frozenset(walker.predicates), tables_read)


def _parse(sql: str) -> exp.Expr:
    # PostgreSQL's own grammar must accept the text as exactly one statement, so sqlglot's more lenient
    # parser cannot be handed something PostgreSQL would read differently (or not at all).
    try:
        stmts = json.loads(pg_parser.parse_sql_json(sql)).get("stmts") or []
    except Exception:
        raise Unresolvable("statement does not parse") from None
    if len(stmts) != 1:
        raise Unresolvable("expected exactly one statement")
    text = plain_identifiers(sql) if "&" in sql else sql
    try:
        parsed = [e for e in sqlglot.parse(text, read="postgres") if e is not None]
    except Exception:  # sqlglot raises more than ParseError on text it cannot handle
        raise Unresolvable("statement form not understood") from None
    if len(parsed) != 1:
        raise Unresolvable("expected exactly one statement")
    return parsed[0]


def _select_from_values(values: exp.Values) -> exp.Select:
    # A bare VALUES list has no scope of its own in sqlglot; trace it as SELECT * FROM (VALUES …).
    if any(value for key, value in values.args.items() if key != "expressions"):
        raise Unresolvable("VALUES with trailing clauses not supported")
    first = values.expressions[0] if values.expressions else None
    width = len(first.expressions) if isinstance(first, exp.Tuple) else 1
    names = [f"column{i + 1}" for i in range(width)]
    alias = exp.TableAlias(this=exp.to_identifier("_values"), columns=[exp.to_identifier(n) for n in names])
    values.set("alias", alias)
    return exp.select(*(exp.column(n, "_values") for n in names)).from_(values)


def _resolve_tables(
    statement: exp.Expr, tables: TableColumns, search_path: Sequence[str], masked: Collection[str]
) -> dict[tuple[str, str], list[str]]:
    columns: dict[tuple[str, str], list[str]] = {}
    for table in statement.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # a function in FROM; its arguments are traced by the walker
        if not table.db:
            continue  # a CTE reference (qualify_tables qualified every real table)
        # A catalog part can only name the current database (PostgreSQL rejects any other).
        table.set("catalog", None)
        name = table.name
        candidates = search_path if table.db == _UNQUALIFIED else [table.db]
        for schema in candidates:
            if (schema, name) in tables:
                table.set("db", exp.to_identifier(schema, quoted=True))
                names = columns[(schema, name)] = [c for c, _ in tables[(schema, name)]]
                alias = table.args.get("alias")
                if isinstance(alias, exp.TableAlias) and alias.columns and any(
                    f"{schema}.{name}.{c}" in masked for c in names
                ):
                    # `customers AS x(a, b, c)` renames columns by position; sqlglot would still
                    # resolve x.name to the stored `name`, so refuse rather than mis-attribute.
                    raise Unresolvable(f"column aliases on {name}, which has masked columns")
                break
        else:
            raise Unresolvable(f"unknown relation {name}")
    return columns


def _reason(exc: SqlglotError) -> str:
    # sqlglot's messages name columns, never values; keep the first line only.
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
