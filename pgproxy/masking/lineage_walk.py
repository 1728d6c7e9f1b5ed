"""Walks a qualified sqlglot query tree scope by scope and attributes masked columns to outputs.

Input: a tree that `lineage.py` already parsed, resolved (every base table carries its schema) and
ran through sqlglot's column qualification, so every column names the alias it comes from. Each
alias is resolved through `sqlglot.optimizer.scope` to a base table, a function in FROM or a derived
source (CTE, subquery, UNION branch, VALUES, LATERAL), recursing into derived sources by position.
Anything this walker does not recognise raises `Unresolvable`: it must never guess "no masked source".
It does no parsing and no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope, walk_in_scope

from pgproxy.masking.lineage_types import EMPTY, OutputSources, Unresolvable

Source = exp.Table | Scope
_MAX_FIXPOINT_ROUNDS = 32

# Clauses whose columns filter, join, group or order rows: a masked column there leaks through the
# result's shape even when its values are never returned.
_PREDICATE_ARGS = ("where", "group", "having", "order", "qualify")
_ELSEWHERE_ARGS = ("limit", "offset", "fetch", "locks", "sample")


def _merge(parts: Iterator[OutputSources] | list[OutputSources]) -> OutputSources:
    plain: set[str] = set()
    derived: set[str] = set()
    for part in parts:
        plain |= part.plain
        derived |= part.derived
    return OutputSources(frozenset(plain - derived), frozenset(derived))


def _everything(sources: OutputSources) -> frozenset[str]:
    return sources.plain | sources.derived


class QueryWalker:
    """One tracing run over one qualified query tree."""

    def __init__(self, root: exp.Expr, columns: Mapping[tuple[str, str], Collection[str]], masked: Collection[str]):
        self.masked = masked
        self.columns = columns  # (schema, table) -> its column names, for base tables only
        self.scopes = traverse_scope(root)
        if not self.scopes:
            raise Unresolvable("statement has no query to trace")
        self.root = self.scopes[-1]
        self.scope_of: dict[int, Scope] = {id(s.expression): s for s in self.scopes}
        self.memo: dict[int, tuple[OutputSources, ...]] = {}
        self.assumed: dict[int, tuple[OutputSources, ...]] = {}
        self.in_progress: set[int] = set()
        self.cycle_hit = False
        self.elsewhere: set[str] = set()
        self.predicates: set[str] = set()

    # -- entry point -----------------------------------------------------------------------------

    def run(self) -> tuple[OutputSources, ...]:
        outputs = self.outputs(self.root)
        for scope in self.scopes:
            self._clauses(scope)
        self.elsewhere |= self.predicates
        return outputs

    # -- outputs of a scope, by position --------------------------------------------------------

    def outputs(self, scope: Scope) -> tuple[OutputSources, ...]:
        key = id(scope.expression)
        if key in self.memo:
            return self.memo[key]
        if key in self.in_progress:
            # A recursive CTE reading itself: answer with the current assumption and iterate below.
            self.cycle_hit = True
            return self.assumed.get(key, ())
        self.in_progress.add(key)
        try:
            result = self._fixpoint(scope, key)
        finally:
            self.in_progress.discard(key)
        self.memo[key] = result
        return result

    def _fixpoint(self, scope: Scope, key: int) -> tuple[OutputSources, ...]:
        outer_cycle = self.cycle_hit
        for _ in range(_MAX_FIXPOINT_ROUNDS):
            self.cycle_hit = False
            before = set(self.memo)
            result = self._compute(scope)
            if not self.cycle_hit or result == self.assumed.get(key):
                self.cycle_hit = outer_cycle or self.cycle_hit
                return result
            # Results computed under a stale assumption must not survive into the next round.
            for stale in set(self.memo) - before:
                del self.memo[stale]
            self.assumed[key] = result
        raise Unresolvable("recursive query does not settle")

    def _compute(self, scope: Scope) -> tuple[OutputSources, ...]:
        node = scope.expression
        if isinstance(node, exp.SetOperation):
            branches = [self.outputs(branch) for branch in scope.set_operation_scopes]
            widths = {len(b) for b in branches}
            if len(widths) != 1:
                raise Unresolvable("set operation branches differ in width")
            return tuple(_merge([b[i] for b in branches]) for i in range(widths.pop()))
        if isinstance(node, exp.Select):
            result = []
            for projection in node.expressions:
                if _is_star(projection):
                    raise Unresolvable("cannot expand * in the select list")
                result.append(self.value(scope, projection, top=True))
            return tuple(result)
        if isinstance(node, exp.Values):
            rows = [row.expressions if isinstance(row, exp.Tuple) else [row] for row in node.expressions]
            widths = {len(r) for r in rows}
            if len(widths) != 1:
                raise Unresolvable("VALUES rows differ in width")
            return tuple(
                _merge([self.value(scope, r[i], top=True) for r in rows]) for i in range(widths.pop())
            )
        if isinstance(node, exp.Unnest):
            # Elements of an array are computed from it: derived from every argument, conservatively.
            reads = frozenset().union(*(self.reads(scope, arg) for arg in node.expressions))
            width = len(node.expressions) + (1 if node.args.get("offset") else 0)
            alias = node.args.get("alias")
            if isinstance(alias, exp.TableAlias) and alias.columns:
                width = len(alias.columns)
            return tuple(OutputSources(frozenset(), reads) for _ in range(width))
        if isinstance(node, exp.Lateral) and isinstance(node.this, exp.Subquery):
            inner = self.scope_of.get(id(node.this.this)) or self.scope_of.get(id(node.this))
            if inner is None:
                raise Unresolvable("cannot trace a LATERAL subquery")
            return self.outputs(inner)
        if isinstance(node, exp.Subquery) and id(node.this) in self.scope_of:
            return self.outputs(self.scope_of[id(node.this)])
        raise Unresolvable(f"cannot trace a {type(node).__name__.lower()} source")

    def output_names(self, scope: Scope) -> list[str]:
        node = scope.expression
        holders: list[exp.Expr] = [node]
        if isinstance(node.parent, (exp.Subquery, exp.CTE)):
            holders.append(node.parent)
        for holder in holders:
            alias = holder.args.get("alias")
            if isinstance(alias, exp.TableAlias) and alias.columns:
                return [c.name for c in alias.columns]
        if isinstance(node, exp.Lateral) and isinstance(node.this, exp.Subquery):
            inner = self.scope_of.get(id(node.this.this))
            if inner is not None:
                return self.output_names(inner)
        if isinstance(node, exp.Query):
            return list(node.named_selects)
        raise Unresolvable(f"cannot name the columns of a {type(node).__name__.lower()} source")

    # -- values --------------------------------------------------------------------------------

    def value(self, scope: Scope, node: exp.Expr, *, top: bool) -> OutputSources:
        """Sources of one value; only a bare column (through aliases and parentheses) stays plain."""
        if top:
            while isinstance(node, (exp.Alias, exp.Paren)):
                node = node.this
            if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
                return self.column(scope, node)
        return OutputSources(frozenset(), self.reads(scope, node))

    def reads(self, scope: Scope, node: exp.Expr) -> frozenset[str]:
        """Every masked column a value reads, through subqueries and derived sources."""
        found: set[str] = set()
        stack: list[exp.Expr] = [node]
        while stack:
            current = stack.pop()
            if isinstance(current, exp.Query) and current is not node:
                child = self._scope_for(current)
                if child is None:
                    raise Unresolvable("cannot trace a nested query")
                if not isinstance(current.parent, exp.Exists):
                    # EXISTS looks at row existence only; its own WHERE is walked as a scope.
                    for out in self.outputs(child):
                        found |= _everything(out)
                continue
            if isinstance(current, exp.Column):
                if isinstance(current.this, exp.Star):
                    self.whole_row(scope, current.table)
                else:
                    found |= _everything(self.column(scope, current))
                continue
            if isinstance(current, exp.TableColumn):
                self.whole_row(scope, current.name)
                continue
            if isinstance(current, exp.Star) and not isinstance(current.parent, (exp.Count, exp.Dot)):
                raise Unresolvable("* used as a value")
            stack.extend(current.iter_expressions())
        return frozenset(found)

    def column(self, scope: Scope, column: exp.Column) -> OutputSources:
        name = column.name
        if not column.table:
            return self._output_alias(scope, name)
        source, owner = self.find_source(scope, column.table)
        if isinstance(source, exp.Table):
            if not isinstance(source.this, exp.Identifier):
                return OutputSources(frozenset(), self._function_reads(owner, source))
            schema, table = source.db, source.name
            known = self.columns.get((schema, table), ())
            if name not in known:
                alias = source.args.get("alias")
                renamed = isinstance(alias, exp.TableAlias) and bool(alias.columns)
                if renamed and not any(f"{schema}.{table}.{c}" in self.masked for c in known):
                    return EMPTY  # `orders AS o(a, b)`: renamed, and nothing in the table is masked
                raise Unresolvable(f"unknown column {name} of {schema}.{table}")
            key = f"{schema}.{table}.{name}"
            return OutputSources(frozenset({key}), frozenset()) if key in self.masked else EMPTY
        target = self._redirect(source)
        names = self.output_names(target)
        outs = self.outputs(target)
        if not outs and id(target.expression) in self.in_progress:
            return EMPTY  # first round of a recursive CTE: nothing is known to flow yet
        if len(names) != len(outs):
            raise Unresolvable(f"cannot line up the columns of {column.table}")
        hits = [outs[i] for i, n in enumerate(names) if n == name]
        if not hits:
            raise Unresolvable(f"unknown column {name} of {column.table}")
        return _merge(hits)

    def _output_alias(self, scope: Scope, name: str) -> OutputSources:
        # An unqualified column left by qualification names an output column (ORDER BY email).
        node = scope.expression
        if isinstance(node, exp.Query):
            hits = [i for i, n in enumerate(node.named_selects) if n == name]
            outs = self.outputs(scope) if hits and id(node) not in self.in_progress else ()
            if hits and len(outs) == len(node.named_selects):
                return _merge([outs[i] for i in hits])
        raise Unresolvable(f"cannot resolve column {name}")

    def whole_row(self, scope: Scope, alias: str) -> None:
        source, owner = self.find_source(scope, alias)
        if isinstance(source, exp.Table):
            if not isinstance(source.this, exp.Identifier):
                carries = bool(self._function_reads(owner, source))
            else:
                schema, table = source.db, source.name
                carries = any(f"{schema}.{table}.{c}" in self.masked for c in self.columns.get((schema, table), ()))
        else:
            carries = any(_everything(o) for o in self.outputs(self._redirect(source)))
        if carries:
            raise Unresolvable(f"whole-row reference to {alias}, which carries masked columns")

    def _function_reads(self, owner: Scope, source: exp.Table) -> frozenset[str]:
        # A function in FROM: whatever columns it yields are computed from its arguments.
        reads: set[str] = set()
        for key, arg in source.args.items():  # the call, or ROWS FROM (call, call, ...)
            for part in arg if isinstance(arg, list) else [arg]:
                if key != "alias" and isinstance(part, exp.Expr):
                    reads |= self.reads(owner, part)
        return frozenset(reads)

    def _scope_for(self, query: exp.Expr) -> Scope | None:
        while True:
            found = self.scope_of.get(id(query))
            if found is not None or not isinstance(query, exp.Subquery):
                return found
            query = query.this

    def find_source(self, scope: Scope, alias: str) -> tuple[Source, Scope]:
        current: Scope | None = scope
        while current is not None:
            if alias in current.sources:
                return current.sources[alias], current
            current = current.parent
        raise Unresolvable(f"cannot resolve relation {alias}")

    def _redirect(self, source: Scope) -> Scope:
        # Inside a recursive CTE, sqlglot points the self-reference at the anchor branch only; the
        # rows the recursion reads are the whole CTE's, so trace the whole set operation instead.
        parent = source.expression.parent
        if isinstance(parent, exp.SetOperation) and isinstance(parent.parent, exp.CTE):
            whole = self.scope_of.get(id(parent))
            if whole is None:
                raise Unresolvable("cannot trace a recursive query")
            return whole
        return source

    # -- clauses other than the output list --------------------------------------------------------

    def _clauses(self, scope: Scope) -> None:
        node = scope.expression
        if not isinstance(node, (exp.Select, exp.SetOperation)):
            return
        for arg in _PREDICATE_ARGS:
            part = node.args.get(arg)
            if part is not None:
                self._use(scope, part, predicate=True)
        for arg in _ELSEWHERE_ARGS:
            part = node.args.get(arg)
            if isinstance(part, exp.Expr):
                self._use(scope, part, predicate=False)
        distinct = node.args.get("distinct")
        if isinstance(distinct, exp.Distinct) and distinct.args.get("on") is not None:
            self._use(scope, distinct.args["on"], predicate=True)
        for window in node.args.get("windows") or []:
            self._use(scope, window, predicate=True)
        for join in node.args.get("joins") or []:
            self._joins(scope, join)
        from_ = node.args.get("from_")
        if from_ is not None:
            for join in from_.find_all(exp.Join):  # joins nested in parenthesised FROM items
                if self.scope_of.get(id(join.this)) is None:
                    self._joins(scope, join)
        for window in walk_in_scope(node):
            if isinstance(window, exp.Window):
                for arg in ("partition_by", "order"):
                    part = window.args.get(arg)
                    for item in part if isinstance(part, list) else [part]:
                        if isinstance(item, exp.Expr):
                            self._use(scope, item, predicate=True)

    def _joins(self, scope: Scope, join: exp.Expr) -> None:
        for arg in ("on", "using"):
            part = join.args.get(arg)
            for item in part if isinstance(part, list) else [part]:
                if isinstance(item, exp.Identifier):
                    raise Unresolvable("JOIN USING left unresolved")
                if isinstance(item, exp.Expr):
                    self._use(scope, item, predicate=True)

    def _use(self, scope: Scope, node: exp.Expr, *, predicate: bool) -> None:
        found: set[str] = set()
        query = scope.expression
        for item in node.expressions if isinstance(node, (exp.Group, exp.Order)) else [node]:
            target = item.this if isinstance(item, exp.Ordered) else item
            if isinstance(target, exp.Literal) and target.is_int and isinstance(query, exp.Query):
                # ORDER BY 2 / GROUP BY 2 name an output column by position.
                outs = self.outputs(scope)
                index = int(target.name) - 1
                if 0 <= index < len(outs):
                    found |= _everything(outs[index])
                continue
            found |= self.reads(scope, item)
        self.elsewhere |= found
        if predicate:
            self.predicates |= found


def _is_star(node: exp.Expr) -> bool:
    # A star qualification could not expand (e.g. over a function whose columns are unknown).
    if isinstance(node, exp.Alias):
        node = node.this
    if isinstance(node, exp.Column):
        return isinstance(node.this, exp.Star)
    if isinstance(node, exp.Dot):
        return isinstance(node.expression, exp.Star)
    return isinstance(node, exp.Star)
