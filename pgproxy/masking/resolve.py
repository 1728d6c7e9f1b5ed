"""Which columns of one database are masked for one set of policy masks, views included.

Policies name table (or view) columns. A view or materialized view over a masked column masks its
own columns too: each view whose definition reads a masked relation is traced (``lineage``) and its
output columns get the rules of the columns they come from, in dependency order, until nothing
changes. A view whose definition cannot be traced while it reads masked columns, and the statistics
views that show sample values of every column (``pg_stats`` …), are *refused*: statements reading them
are not run for sessions with masks. Partitions and inheritance children take their parent's masks
(their rows are the parent's rows).

Pure: works on a ``CatalogSnapshot``; it must not talk to PostgreSQL or know about sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from pgproxy.masking.guard import guarded_refusal
from pgproxy.masking.lineage import OutputSources, Unresolvable, trace
from pgproxy.masking.rules import ColumnRule, strictest
from pgproxy.masking.snapshot import VIEW_KINDS, CatalogSnapshot, Relation
from pgproxy.policy.model import Mask
from pgproxy.sql.classify import classify_uncached

log = logging.getLogger(__name__)

# Catalog views whose rows hold sample values (most common values, histogram bounds) of any column
# the reader may select: masking every value column of them is not worth it — reading them is refused.
STATISTICS_VIEWS = frozenset(
    {
        ("pg_catalog", "pg_stats"),
        ("pg_catalog", "pg_stats_ext"),
        ("pg_catalog", "pg_stats_ext_exprs"),
        ("pg_catalog", "pg_statistic"),
        ("pg_catalog", "pg_statistic_ext_data"),
    }
)
_STATISTICS_REASON = "it shows sample values of every column, masked ones included"

TableName = tuple[str, str]
# View definitions are read with only pg_catalog on the search path, so every other name in them is
# schema-qualified (pg_get_viewdef qualifies what the reader's search path would not find).
VIEW_SEARCH_PATH = ("pg_catalog",)


@dataclass(frozen=True, eq=False)
class MaskedCatalog:
    """The masked columns of one database for one set of masks, found by name or by (table OID, attnum)."""

    snapshot: CatalogSnapshot
    masks: tuple[Mask, ...]
    rules: Mapping[str, ColumnRule]  # "schema.table.column" → how it is masked (tables and views)
    by_attribute: Mapping[tuple[int, int], ColumnRule]  # (table OID, attnum) → how it is masked
    masked_relations: frozenset[TableName]  # relations with at least one masked column
    refused_relations: Mapping[TableName, str]  # reading these is refused, and why
    predicate_guarded: frozenset[str] = field(default=frozenset())  # masks with refuse_predicates: their columns

    @cached_property
    def masked_oids(self) -> frozenset[int]:
        """OIDs of the tables and views with masked columns."""
        return frozenset(oid for oid, _ in self.by_attribute)

    @property
    def active(self) -> bool:
        return bool(self.rules) or bool(self.refused_relations)


def build_masked_catalog(snapshot: CatalogSnapshot, masks: Sequence[Mask]) -> MaskedCatalog:
    """Resolve ``masks`` (already filtered to one session's identity and database) against ``snapshot``."""
    rules: dict[str, ColumnRule] = {}
    guarded: set[str] = set()
    for mask in masks:
        for name, column_mask in mask.columns.items():
            rules.setdefault(name, ColumnRule.of(column_mask, name))  # the first mask naming a column wins
            if mask.refuse_predicates:
                guarded.add(name)
    refused: dict[TableName, str] = {}
    if rules:
        refused.update(dict.fromkeys(STATISTICS_VIEWS, _STATISTICS_REASON))
        _inherit(snapshot, rules, guarded)
        _resolve_views(snapshot, rules, refused, guarded)
    by_attribute: dict[tuple[int, int], ColumnRule] = {}
    masked_relations: set[TableName] = set()
    for relation in snapshot.relations:
        for column in relation.columns:
            rule = rules.get(f"{relation.qualified}.{column.name}")
            if rule is not None:
                by_attribute[(relation.oid, column.attnum)] = rule
                masked_relations.add((relation.schema, relation.name))
    return MaskedCatalog(
        snapshot=snapshot,
        masks=tuple(masks),
        rules=MappingProxyType(rules),
        by_attribute=MappingProxyType(by_attribute),
        masked_relations=frozenset(masked_relations),
        refused_relations=MappingProxyType(refused),
        predicate_guarded=frozenset(guarded),
    )


def _inherit(snapshot: CatalogSnapshot, rules: dict[str, ColumnRule], guarded: set[str]) -> None:
    """Partitions and inheritance children carry their ancestors' masks, and ancestors their children's
    (a query of the parent returns the children's rows), matched by column name."""
    parents = snapshot.parents
    if not parents:
        return
    _inherit_up(snapshot, rules, guarded)
    for relation in snapshot.relations:
        pending = list(parents.get(relation.oid, ()))
        seen: set[int] = set()
        while pending:
            ancestor_oid = pending.pop()
            ancestor = snapshot.by_oid.get(ancestor_oid)
            if ancestor_oid in seen or ancestor is None:
                continue
            seen.add(ancestor_oid)
            pending.extend(parents.get(ancestor_oid, ()))
            for column in relation.columns:
                inherited = f"{ancestor.qualified}.{column.name}"
                rule = rules.get(inherited)
                if rule is not None:
                    rules.setdefault(f"{relation.qualified}.{column.name}", rule)
                    if inherited in guarded:
                        guarded.add(f"{relation.qualified}.{column.name}")


def _inherit_up(snapshot: CatalogSnapshot, rules: dict[str, ColumnRule], guarded: set[str]) -> None:
    for relation in snapshot.relations:
        own = {column.name: rules.get(f"{relation.qualified}.{column.name}") for column in relation.columns}
        if not any(own.values()):
            continue
        pending, seen = list(snapshot.parents.get(relation.oid, ())), set()
        while pending:
            ancestor = snapshot.by_oid.get(pending.pop())
            if ancestor is None or ancestor.oid in seen:
                continue
            seen.add(ancestor.oid)
            pending.extend(snapshot.parents.get(ancestor.oid, ()))
            for column in ancestor.columns:
                rule = own.get(column.name)
                if rule is not None:
                    key = f"{ancestor.qualified}.{column.name}"
                    rules.setdefault(key, rule)
                    if f"{relation.qualified}.{column.name}" in guarded:
                        guarded.add(key)


def _resolve_views(
    snapshot: CatalogSnapshot, rules: dict[str, ColumnRule], refused: dict[TableName, str], guarded: set[str]
) -> None:
    """Give views over masked columns their rules, and refuse those that cannot be traced.

    Views read other views in any catalog order (``CREATE OR REPLACE VIEW`` can make an old view read a
    newer one), so every candidate is traced again each round until a round changes nothing. Rules and
    refusals only grow, so this ends; the bound is a guard (a view still changing then is refused).
    """
    views = [r for r in snapshot.relations if r.kind in VIEW_KINDS and r.definition is not None]
    found: dict[int, tuple[dict[str, ColumnRule], frozenset[str]] | str] = {}
    for _ in range(len(views) + 2):
        masked_names = {key.rsplit(".", 2)[1] for key in rules} | {name for _, name in refused}
        changed = False
        for view in views:
            assert view.definition is not None
            # Cheap and sound filter: a view reading a relation names it in its definition.
            if not any(name in view.definition for name in masked_names):
                continue
            result = _trace_view(snapshot, view, rules, refused, guarded)
            if found.get(view.oid) == result:
                continue
            found[view.oid] = result
            changed = True
            if isinstance(result, str):
                refused[(view.schema, view.name)] = result
            else:
                rules.update(result[0])
                guarded.update(result[1])
        if not changed:
            break
    else:
        for view in views:
            if view.oid in found and (view.schema, view.name) not in refused:
                refused[(view.schema, view.name)] = "its masking could not be settled (views reading each other)"
    for view in views:
        reason = refused.get((view.schema, view.name))
        if reason is not None and view.oid in found:
            log.warning("view %s reads masked columns and cannot be traced: %s", view.qualified, reason)


def _trace_view(
    snapshot: CatalogSnapshot,
    view: Relation,
    rules: Mapping[str, ColumnRule],
    refused: Mapping[TableName, str],
    guarded: set[str],
) -> tuple[dict[str, ColumnRule], frozenset[str]] | str:
    """The rules of ``view``'s masked columns and which of them are guarded, or why it cannot be traced."""
    assert view.definition is not None
    statements = classify_uncached(view.definition).statements
    read_names = {relation for s in statements for relation in s.reads}
    tables: dict[TableName, list[tuple[str, str]]] = {}
    for name in read_names:
        relation = snapshot.relation(name.schema, name.name, VIEW_SEARCH_PATH)
        if relation is None:
            continue  # lineage reports it as unknown if it matters
        if (relation.schema, relation.name) in refused:
            return f"it reads {relation.qualified}, which cannot be masked"
        tables[(relation.schema, relation.name)] = [(c.name, str(c.type_oid)) for c in relation.columns]
    try:
        traced = trace(view.definition, tables, VIEW_SEARCH_PATH, frozenset(rules))
    except Unresolvable as exc:
        return str(exc)
    if len(traced.outputs) != len(view.columns):
        return "its definition has a different number of columns than the view"
    if statements:
        asks = guarded_refusal(traced, frozenset(guarded), view.definition, statements[0], snapshot.set_returning)
        if asks is not None:
            return asks.replace("it ", "its definition ", 1)
    view_rules: dict[str, ColumnRule] = {}
    view_guarded: set[str] = set()
    for column, sources in zip(view.columns, traced.outputs, strict=True):
        rule = output_rule(sources, rules)
        if rule is not None:
            key = f"{view.qualified}.{column.name}"
            view_rules[key] = rule
            if sources.plain & guarded or sources.derived & guarded:
                view_guarded.add(key)
    return view_rules, frozenset(view_guarded)


def output_rule(sources: OutputSources, rules: Mapping[str, ColumnRule]) -> ColumnRule | None:
    """The rule of one output column from the masked columns feeding it (plainly or by computation)."""
    found = [rules[key] for key in sorted(sources.plain) if key in rules]
    found += [rules[key].as_derived() for key in sorted(sources.derived) if key in rules]
    return strictest(found)
