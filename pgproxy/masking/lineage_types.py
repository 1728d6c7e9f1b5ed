"""Result types shared by the lineage tracer's modules (pure data, no parsing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class Unresolvable(Exception):
    """The statement's data flow cannot be traced; str(exc) is a reason fit for the client (no values)."""


@dataclass(frozen=True, slots=True)
class OutputSources:
    plain: frozenset[str]  # masked columns ("schema.table.column") whose values this output column carries unchanged
    derived: frozenset[str]  # masked columns it is computed from


@dataclass(frozen=True, slots=True)
class Lineage:
    outputs: tuple[OutputSources, ...]
    elsewhere: frozenset[str]
    predicates: frozenset[str]
    tables: frozenset[tuple[str, str]]


TableColumns = Mapping[tuple[str, str], Sequence[tuple[str, str]]]

EMPTY = OutputSources(frozenset(), frozenset())
