"""Masked-column reads of INSERT / UPDATE / DELETE / MERGE, by name (conservative).

sqlglot does not qualify the columns of data-modifying statements, so this module over-approximates:
a column named ``email`` anywhere in the statement counts as a read of every masked ``email`` column
of every base table the statement mentions. Reading by name cannot miss a read (a base column is only
reached by its name, a star or a whole-row reference, and the latter two are handled explicitly); it
may report extra ones, which only makes the caller stricter. Assignment targets (SET x =, the INSERT
column list) are writes, not reads, and are left out. No parsing, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlglot import exp

from pgproxy.masking.lineage_types import Lineage, OutputSources, Unresolvable

_PREDICATE_NODES = (exp.Where, exp.Group, exp.Having, exp.Order, exp.Window, exp.Join)


def trace_dml(
    statement: exp.DML,
    columns: Mapping[tuple[str, str], Collection[str]],
    masked: Collection[str],
) -> Lineage:
    tables = {(t.db, t.name) for t in statement.find_all(exp.Table) if isinstance(t.this, exp.Identifier) and t.db}
    by_name: dict[str, set[str]] = {}
    all_masked: set[str] = set()
    for schema, table in tables:
        for name in columns[(schema, table)]:
            key = f"{schema}.{table}.{name}"
            if key in masked:
                by_name.setdefault(name, set()).add(key)
                all_masked.add(key)

    # An unqualified name that is a relation's alias and no column is a whole-row reference.
    known = {n for c in columns.values() for n in c}
    sources = statement.find_all(exp.Table, exp.Subquery, exp.CTE, exp.Values, exp.Unnest, exp.Lateral)
    row_names = {s.alias_or_name for s in sources} - known
    base_aliases = {
        t.alias_or_name for t in statement.find_all(exp.Table) if isinstance(t.this, exp.Identifier) and t.db
    }
    targets = _assignment_targets(statement)
    returning = statement.args.get("returning")
    elsewhere: set[str] = set()
    predicates: set[str] = set()
    for node in statement.walk():
        if id(node) in targets:
            continue
        reads: set[str] = set()
        if isinstance(node, exp.Column) and not node.table and node.name in row_names and all_masked:
            raise Unresolvable(f"whole-row reference to {node.name}, which carries masked columns")
        if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
            reads = by_name.get(node.name, set())
        elif isinstance(node, (exp.Star, exp.TableColumn)) or (
            isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
        ):
            if all_masked and not isinstance(node.parent, (exp.Count, exp.Select, exp.Column, exp.Returning)):
                raise Unresolvable("whole-row reference to a relation with masked columns")
            reads = all_masked  # a star stores or compares every column
        elif isinstance(node, exp.Identifier) and isinstance(node.parent, exp.Join):
            reads = by_name.get(node.name, set())  # JOIN ... USING (col)
        if not reads:
            continue
        chain = _ancestors(node, statement)
        if any(isinstance(a, _PREDICATE_NODES) for a in chain) or _is_merge_condition(statement, [node, *chain]):
            predicates |= reads
        elif all(a is not returning for a in chain):  # RETURNING values are outputs, not reads
            elsewhere |= reads

    outputs: list[OutputSources] = []
    if isinstance(returning, exp.Returning):
        for column in returning.find_all(exp.Column):
            # By-name matching only sees base columns; a value renamed in a subquery or CTE
            # (`FROM (SELECT email AS e …) s RETURNING s.e`) would look unmasked, so refuse it.
            if (column.table and column.table not in base_aliases) or (not column.table and column.name not in known):
                raise Unresolvable(f"RETURNING {column.name} does not come from a table")
        for item in returning.expressions:
            outputs.extend(_returning(statement, item, columns, masked, by_name))
    return Lineage(tuple(outputs), frozenset(elsewhere | predicates), frozenset(predicates), frozenset(tables))


def _returning(
    statement: exp.DML,
    item: exp.Expr,
    columns: Mapping[tuple[str, str], Collection[str]],
    masked: Collection[str],
    by_name: Mapping[str, set[str]],
) -> tuple[OutputSources, ...]:
    node = item.this if isinstance(item, exp.Alias) else item
    if isinstance(node, exp.Star):
        target = statement.this
        if isinstance(target, exp.Schema):
            target = target.this
        if statement.args.get("from_") or statement.args.get("using") or not isinstance(target, exp.Table):
            raise Unresolvable("RETURNING * over several relations")
        names = columns[(target.db, target.name)]
        keys = [f"{target.db}.{target.name}.{n}" for n in names]
        return tuple(OutputSources(frozenset({k} & set(masked)), frozenset()) for k in keys)
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        return (OutputSources(frozenset(by_name.get(node.name, set())), frozenset()),)
    derived: set[str] = set()
    for sub in node.walk():
        if isinstance(sub, exp.Column) and not isinstance(sub.this, exp.Star):
            derived |= by_name.get(sub.name, set())
        elif (
            isinstance(sub, (exp.Star, exp.TableColumn, exp.Column))
            and not isinstance(sub.parent, exp.Count)
            and any(by_name.values())
        ):
            raise Unresolvable("whole-row reference to a relation with masked columns")
    return (OutputSources(frozenset(), frozenset(derived)),)


def _assignment_targets(statement: exp.DML) -> set[int]:
    ids: set[int] = set()
    for node in statement.walk():
        if isinstance(node, exp.EQ) and isinstance(node.parent, (exp.Update, exp.OnConflict)) and (
            node.arg_key == "expressions"
        ):
            ids.update(id(n) for n in node.this.walk())  # SET col = ...: the column is written
        if isinstance(node, exp.Insert) and isinstance(node.this, exp.Schema):
            ids.update(id(n) for n in node.this.expressions for n in n.walk())
        if isinstance(node, exp.Insert) and isinstance(node.this, exp.Tuple):  # MERGE ... INSERT (cols)
            ids.update(id(n) for n in node.this.walk())
    return ids


def _ancestors(node: exp.Expr, root: exp.Expr) -> list[exp.Expr]:
    found = []
    current = node.parent
    while current is not None and current is not root:
        found.append(current)
        current = current.parent
    return found


def _is_merge_condition(statement: exp.DML, chain: list[exp.Expr]) -> bool:
    # MERGE ... ON cond and WHEN MATCHED AND cond decide which rows change: they filter.
    return isinstance(statement, exp.Merge) and any(a.arg_key in ("on", "condition") for a in chain)
