"""The classifier over PostgreSQL's own regression statements (35,730 of them).

Nothing may escape, every statement keeps the parser's node type, and every statement classified READ
must pass an independent check of the read allow-list (``readcheck``); conversely every statement that
check accepts is classified READ, so the two statements of the rule agree exactly on this corpus. And
replacing every constant by another of its kind never changes a cacheable classification.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pglast.parser
import pytest

from pgproxy.sql.cache import shape_key
from pgproxy.sql.classify import Classifier, classify_text, classify_uncached
from pgproxy.sql.statement import Category
from tests.unit.sql.readcheck import may_be_read

CORPUS = Path("/work/shared/corpus/pg_regress_statements.jsonl")


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    if not CORPUS.exists():
        pytest.fail(f"the regression corpus is missing at {CORPUS}")
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_corpus_is_the_expected_one(corpus: list[dict[str, Any]]) -> None:
    assert len(corpus) == 35_730


def test_every_statement_classifies_with_its_node_type_and_no_internal_failure(corpus: list[dict[str, Any]]) -> None:
    failures = []
    for row in corpus:
        classification = classify_uncached(row["sql"])
        for statement in classification.statements:
            reason = statement.reason or ""
            if reason.startswith(("pgproxy could not classify", "unexpected parse tree shape")):
                failures.append((row["sql"], reason))
            assert statement.command, row["sql"]
            assert statement.unsafe_functions <= statement.functions, row["sql"]
        if row.get("pglast_type"):
            assert [s.node for s in classification.statements] == [row["pglast_type"]], row["sql"]
    assert failures == []


def test_reads_are_exactly_the_independent_read_allow_list(corpus: list[dict[str, Any]]) -> None:
    wrongly_read, wrongly_not_read = [], []
    for row in corpus:
        tree = json.loads(pglast.parser.parse_sql_json(row["sql"]))
        for raw, statement in zip(tree["stmts"], classify_uncached(row["sql"]).statements, strict=True):
            ((kind, node),) = raw["stmt"].items()
            allowed = may_be_read(kind, node)
            if statement.category is Category.READ and not allowed:
                wrongly_read.append(row["sql"])
            if allowed and statement.category is not Category.READ:
                wrongly_not_read.append((row["sql"], statement.category.value, statement.reason))
    assert wrongly_read == []
    assert wrongly_not_read == []


def test_the_cache_gives_the_uncached_answer(corpus: list[dict[str, Any]]) -> None:
    classifier = Classifier(cache_size=50_000)
    for row in corpus[::7]:
        assert classifier.classify(row["sql"]) == classify_uncached(row["sql"]), row["sql"]
    for row in corpus[::7]:
        assert classifier.classify(row["sql"]) == classify_uncached(row["sql"]), row["sql"]
    assert classifier.hits > 0


OTHER_CONSTANTS = [
    {"ICONST": "7", "FCONST": "2.5", "SCONST": "'v'", "USCONST": "U&'v'", "BCONST": "B'1'", "XCONST": "X'0'"},
    {"ICONST": "0", "FCONST": "0.0", "SCONST": "''", "USCONST": "U&''", "BCONST": "B''", "XCONST": "X''"},
]


def with_other_constants(sql: str, values: dict[str, str]) -> str:
    """``sql`` with every constant replaced by another of the same kind (UESCAPE's character kept)."""
    out, position, after_uescape = [], 0, False
    for token in pglast.parser.scan(sql):
        if token.name in values and not after_uescape:
            out += [sql[position : token.start], values[token.name]]
            position = token.end + 1
        after_uescape = token.name == "UESCAPE"
    out.append(sql[position:])
    return "".join(out)


@pytest.mark.parametrize("values", OTHER_CONSTANTS, ids=["other-values", "empty-and-zero"])
def test_no_cacheable_classification_depends_on_a_constant(
    corpus: list[dict[str, Any]], values: dict[str, str]
) -> None:
    """What the cache assumes, checked on every corpus statement: same key, same classification.

    Texts the grammar itself rejects for a constant's value (``ALTER COLUMN 0``) are skipped: they do
    not parse, so the server refuses them too. Constants the parser does not treat as such (type
    modifiers like ``numeric(10,3)``) stay in the key: those texts simply do not share it.
    """
    differing, rejected, shared = [], 0, 0
    for row in corpus:
        original, cacheable = classify_text(row["sql"])
        if not cacheable:
            continue
        respelled = with_other_constants(row["sql"], values)
        if shape_key(respelled) != shape_key(row["sql"]):
            continue
        shared += 1
        other = classify_uncached(respelled)
        if other.unparseable:
            rejected += 1
            continue
        if other != original:
            differing.append(row["sql"])
    assert differing == []
    assert rejected <= 20
    assert shared > 20_000  # the check covered most of the corpus
