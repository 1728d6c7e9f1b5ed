"""How one result column is masked: a policy's strategy, and whether the value is the column itself.

A *plain* output column carries a masked column's values unchanged (``email``, ``c.email AS e``, the
same column through a subquery, CTE, view or UNION); it gets the policy's strategy as written. A
*derived* column is computed from a masked column (``lower(email)``, ``email || ''``, a cast, an
aggregate); partial and email strategies would be unsafe there — a caller could shift or reverse the
value so that the kept characters are any characters it likes — so a derived value is redacted
instead. Hash and null keep their meaning (an HMAC of a computed value reveals nothing new).

Pure data: no parsing, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pgproxy.policy.model import ColumnMask, MaskStrategy

DEFAULT_REDACTION = "***"

# Strictest first: when an output column mixes several masked sources, the strictest one applies.
_STRICTNESS = {
    MaskStrategy.NULL: 0,
    MaskStrategy.REDACT: 1,
    MaskStrategy.HASH: 2,
    MaskStrategy.EMAIL: 3,
    MaskStrategy.PARTIAL: 4,
}


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """The masking of one output column."""

    strategy: MaskStrategy
    source: str  # the masked column(s) it comes from, "schema.table.column", for messages
    text: str = DEFAULT_REDACTION  # redact: the replacement
    keep_first: int = 0  # partial
    keep_last: int = 4  # partial
    derived: bool = False  # computed from the source rather than its value unchanged

    @classmethod
    def of(cls, mask: ColumnMask, source: str) -> ColumnRule:
        first, last = mask.kept
        return cls(mask.strategy, source, mask.replacement, first, last)

    def as_derived(self) -> ColumnRule:
        """This rule applied to a value computed from the column (see the module docstring)."""
        if self.derived:
            return self
        if self.strategy in (MaskStrategy.PARTIAL, MaskStrategy.EMAIL):
            return ColumnRule(MaskStrategy.REDACT, self.source, DEFAULT_REDACTION, derived=True)
        return ColumnRule(self.strategy, self.source, self.text, self.keep_first, self.keep_last, derived=True)


def strictest(rules: Iterable[ColumnRule]) -> ColumnRule | None:
    """One rule for a column fed by several masked sources; None when there are none.

    A single rule stays as it is; several different rules are combined as a derived value of the
    strictest one (the column mixes values, so no one source's partial/email shape applies).
    """
    distinct = list(dict.fromkeys(rules))
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct[0]
    chosen = min(distinct, key=lambda rule: (_STRICTNESS[rule.strategy], not rule.derived))
    sources = ", ".join(sorted({part for rule in distinct for part in rule.source.split(", ")}))
    derived = chosen.as_derived()
    return ColumnRule(derived.strategy, sources, derived.text, derived.keep_first, derived.keep_last, True)
