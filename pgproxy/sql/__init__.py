"""SQL understanding: pglast classification (and, later, sqlglot lineage). Pure, no I/O."""
