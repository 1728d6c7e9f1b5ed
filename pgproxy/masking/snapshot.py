"""What pgproxy knows of one database's catalog: relations, their columns, types and search paths.

Pure, immutable data built by ``catalog`` (the only module here that talks to PostgreSQL). Result
columns are found by table OID and attribute number (what RowDescription carries); names are found
as PostgreSQL would resolve them, through a search path. Nothing here decides what is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

# pg_class.relkind values pgproxy reads results from
TABLE_KINDS = frozenset("rpf")  # ordinary, partitioned, foreign tables
VIEW_KINDS = frozenset("vm")  # views and materialized views: their columns come from a query


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    attnum: int
    type_oid: int
    typmod: int = -1


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: tuple[Column, ...]
    definition: str | None = None  # views and materialized views: the defining SELECT (pg_get_viewdef)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column_at(self, attnum: int) -> Column | None:
        for column in self.columns:
            if column.attnum == attnum:
                return column
        return None


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    name: str
    category: str  # pg_type.typcategory: "S" string, "N" numeric, "U" user-defined …
    base_oid: int  # a domain's base type; the type itself otherwise


@dataclass(frozen=True, eq=False)
class CatalogSnapshot:
    """One consistent reading of a database's catalog."""

    database: str
    relations: tuple[Relation, ...] = ()
    types: Mapping[int, TypeInfo] = field(default_factory=lambda: MappingProxyType({}))
    # search_path as configured (ALTER ROLE/DATABASE … SET search_path), by role name; "" is the
    # database-wide setting (or the server default) for roles without their own.
    search_paths: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0  # increases with every reading of the same database
    # Partitions and inheritance children: relation OID → its direct parents' OIDs (pg_inherits).
    parents: Mapping[int, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    set_returning: frozenset[str] = frozenset()  # names of set-returning functions (pg_proc.proretset)

    @cached_property
    def by_oid(self) -> Mapping[int, Relation]:
        return MappingProxyType({relation.oid: relation for relation in self.relations})

    @cached_property
    def by_name(self) -> Mapping[tuple[str, str], Relation]:
        return MappingProxyType({(relation.schema, relation.name): relation for relation in self.relations})

    def relation(self, schema: str | None, name: str, search_path: tuple[str, ...]) -> Relation | None:
        """The relation a name means, PostgreSQL's way: qualified names exactly, others by the search path."""
        if schema is not None:
            return self.by_name.get((schema, name))
        for candidate in search_path:
            found = self.by_name.get((candidate, name))
            if found is not None:
                return found
        return None

    def search_path(self, role: str) -> tuple[str, ...]:
        """The schemas an unqualified name is looked up in for ``role``: pg_catalog first (unless the
        setting places it), then the configured path with ``$user`` expanded; missing schemas are kept
        (they cannot shadow anything that exists)."""
        configured = self.search_paths.get(role, self.search_paths.get("", '"$user", public'))
        schemas = [_unquote(part) for part in _split_path(configured)]
        expanded = [role if part == "$user" else part for part in schemas]
        expanded = [part for part in expanded if part and part != "pg_temp"]
        if "pg_catalog" not in expanded:
            expanded.insert(0, "pg_catalog")
        return tuple(expanded)


def _split_path(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
            current.append(char)
        elif char == "," and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def _unquote(part: str) -> str:
    if len(part) >= 2 and part[0] == part[-1] == '"':
        return part[1:-1].replace('""', '"')
    return part.lower()
