"""The value masker of each column of a result set (or of COPY data), from the two sources of rules.

A column's rule comes from the catalog (RowDescription's table OID and attribute number; views
included) and from the statement's plan (lineage of computed columns); the stricter wins. Columns of a
table the catalog reading does not know, and computed columns of results pgproxy cannot trace to a
plan, are nulled. Each rule then becomes a masker for the column's type and format. Maskers are
remembered per plan, columns and formats, so a statement run again does not build them anew (an HMAC
key schedule, type lookups).

Pure: no protocol bookkeeping (that is ``results``), no policy decisions (``masking.plan``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pgproxy.gate.encoding import UnsupportedEncoding, python_codec
from pgproxy.masking.copy_out import CopyOutMasker
from pgproxy.masking.plan import CopyPlan, ResultPlan
from pgproxy.masking.resolve import MaskedCatalog
from pgproxy.masking.rules import ColumnRule, strictest
from pgproxy.masking.values import Masker, type_kind, value_masker
from pgproxy.policy.model import MaskStrategy

Fields = tuple[tuple[int, int, int, int], ...]  # (table OID, attnum, type OID, typmod) per column
Maskers = tuple[Masker | None, ...]

UNKNOWN_ORIGIN = ColumnRule(MaskStrategy.NULL, "a result pgproxy cannot trace", derived=True)
UNPLANNED = ResultPlan(reads_masked=True)  # results pgproxy cannot trace to a statement it planned
_LIMIT = 256


def _null_masker(value: bytes) -> bytes | None:
    return None


# Rows of a result set pgproxy knows nothing about (a portal it did not see bound, no description):
# every value becomes NULL, the one value valid for every type.
NULL_EVERY_COLUMN: Maskers = (_null_masker,)


class ColumnMaskers:
    """Builds (and remembers) the maskers of result sets for one session."""

    def __init__(self, key: bytes, codec: str) -> None:
        self.key = key
        self.codec = codec
        # (plan, catalog, columns, formats) → maskers; plan and catalog kept to make their ids unique
        self._built: dict[tuple[int, int, Fields | None, tuple[int, ...]], tuple[ResultPlan, MaskedCatalog,
                                                                                 Maskers | None]] = {}

    def rows(
        self, catalog: MaskedCatalog, plan: ResultPlan, fields: Fields | None, formats: tuple[int, ...]
    ) -> Maskers | None:
        """The maskers of one result set; None when no column is masked (the raw fast path)."""
        key = (id(plan), id(catalog), fields, formats)
        known = self._built.get(key)
        if known is not None and known[0] is plan and known[1] is catalog:
            return known[2]
        maskers = self._build(catalog, plan, fields, formats)
        if len(self._built) >= _LIMIT:
            self._built.clear()
        self._built[key] = (plan, catalog, maskers)
        return maskers

    def _build(
        self, catalog: MaskedCatalog, plan: ResultPlan, fields: Fields | None, formats: tuple[int, ...]
    ) -> Maskers | None:
        planned = plan.columns
        if fields is None:
            # Rows without a description (a driver that skipped Describe): only the plan can tell, and
            # without types the one valid masked value is NULL.
            if planned is None and plan.reads_masked:
                return NULL_EVERY_COLUMN  # not even the number of columns is known
            if not planned or all(rule is None for rule in planned):
                return None
            return tuple(None if rule is None else _null_masker for rule in planned)
        mismatch = planned is not None and len(planned) != len(fields)
        by_attribute, types, known = catalog.by_attribute, catalog.snapshot.types, catalog.snapshot.by_oid
        maskers: list[Masker | None] = []
        for index, (table_oid, attnum, type_oid, typmod) in enumerate(fields):
            rules: list[ColumnRule] = []
            if table_oid:
                found = by_attribute.get((table_oid, attnum))
                if found is not None:
                    rules.append(found)
                elif table_oid not in known:
                    rules.append(UNKNOWN_ORIGIN)
            if mismatch:
                rules.append(UNKNOWN_ORIGIN)
            elif planned is not None and (planned_rule := planned[index]) is not None:
                rules.append(planned_rule)
            elif plan is UNPLANNED and not table_oid:
                rules.append(UNKNOWN_ORIGIN)
            rule = strictest(rules)
            if rule is None:
                maskers.append(None)
                continue
            maskers.append(value_masker(
                rule, type_kind(type_oid, types), binary=_format_of(formats, index) == 1, typmod=typmod,
                codec=self.codec, key=self.key, type_oid=type_oid,
            ))
        return tuple(maskers) if any(m is not None for m in maskers) else None

    def copy(self, catalog: MaskedCatalog, copy: CopyPlan) -> CopyOutMasker:
        """The masker of ``COPY … TO STDOUT`` data (its ENCODING option, if any, decides the codec)."""
        binary = copy.format == "binary"
        codec = self.codec if copy.encoding is None else _codec_for(copy.encoding, self.codec)
        types = catalog.snapshot.types
        maskers = [
            None if rule is None else value_masker(
                rule, type_kind(type_oid, types), binary=binary, typmod=-1, codec=codec, key=self.key,
                type_oid=type_oid,
            )
            for rule, type_oid in zip(copy.rules, copy.types, strict=True)
        ]
        return CopyOutMasker(
            copy.format, maskers, delimiter=copy.delimiter, null=copy.null, quote=copy.quote,
            escape=copy.escape, header=copy.header, codec=codec,
        )


def _format_of(formats: Sequence[int], index: int) -> int:
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0


def _codec_for(encoding: str, fallback: str) -> str:
    try:
        return python_codec(encoding.upper())
    except UnsupportedEncoding:
        return fallback
