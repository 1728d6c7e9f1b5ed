"""Cost of statement classification: microseconds per statement, uncached and from the cache.

Measures, on this machine and in this process:
- the pgbench select-only statement (``SELECT abalance FROM pgbench_accounts WHERE aid = N``) with a
  different aid each time: uncached (parse + walk), the cache key alone (pglast's normalization), and cached
  (key + hit); and with ``$1`` (the extended protocol's identical text): uncached and cached;
- a mix of statements from PostgreSQL's regression corpus, uncached and cached;
and prints the category distribution of the corpus. Run: ``.venv/bin/python bench/classify_bench.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pgproxy.sql.cache import shape_key
from pgproxy.sql.classify import Classifier, classify_uncached

CORPUS = Path("/work/shared/corpus/pg_regress_statements.jsonl")
PGBENCH = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"


def per_call_us(function: Callable[[str], object], texts: Sequence[str], repeats: int) -> float:
    """Best of ``repeats`` passes over ``texts``, in microseconds per call."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            function(text)
        best = min(best, (time.perf_counter() - start) / len(texts))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="pgbench statements per pass")
    parser.add_argument("--mix", type=int, default=5_000, help="corpus statements in the mix")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)

    pgbench = [PGBENCH.format(rng.randint(1, 1_000_000)) for _ in range(args.count)]
    classifier = Classifier()
    classifier.classify(pgbench[0])
    print("pgbench select-only statement, a new aid each time")
    print(f"  uncached (parse + walk)  {per_call_us(classify_uncached, pgbench, args.repeats):8.2f} µs")
    print(f"  cache key only (normalize){per_call_us(shape_key, pgbench, args.repeats):8.2f} µs")
    print(f"  cached (key + hit)       {per_call_us(classifier.classify, pgbench, args.repeats):8.2f} µs")
    print(f"  parses for {classifier.hits + classifier.misses} classifications: {classifier.misses}")
    extended = [PGBENCH.format("$1")] * args.count
    print("pgbench select-only statement with $1 (extended protocol: the same text each time)")
    print(f"  uncached (parse + walk)  {per_call_us(classify_uncached, extended, args.repeats):8.2f} µs")
    print(f"  cached (text hit)        {per_call_us(classifier.classify, extended, args.repeats):8.2f} µs")

    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    mix = [row["sql"] for row in rng.sample(rows, min(args.mix, len(rows)))]
    warm = Classifier(cache_size=len(mix) * 2)
    for text in mix:
        warm.classify(text)
    shapes = warm.cached
    print(f"\nregression corpus mix of {len(mix)} statements (mean length {sum(map(len, mix)) / len(mix):.0f} chars)")
    print(f"  uncached (parse + walk)  {per_call_us(classify_uncached, mix, args.repeats):8.2f} µs")
    print(f"  cached (key + hit)       {per_call_us(warm.classify, mix, args.repeats):8.2f} µs")
    print(f"  distinct shapes cached: {shapes}; texts kept as keys (no constant, no comment): {warm.cached_texts}")

    categories: collections.Counter[str] = collections.Counter()
    statements = 0
    for row in rows:
        for statement in classify_uncached(row["sql"]).statements:
            categories[statement.category.value] += 1
            statements += 1
    print(f"\ncategory distribution over the whole corpus ({statements} statements)")
    for category, count in categories.most_common():
        print(f"  {category:<12} {count:6d}  {100 * count / statements:5.1f} %")


if __name__ == "__main__":
    main()
