"""Building blocks for ``bench/run.py``: throwaway servers, pgbench runs, CPU accounting and the report.

Each module owns one concern:

- ``procs``: running commands (as the ``postgres`` OS user when we are root), background services,
  free ports, and process-tree CPU time read from ``/proc``;
- ``postgres``: a throwaway PostgreSQL cluster on 127.0.0.1;
- ``pgbouncer``: pgbouncer in session mode in front of it;
- ``pgproxy``: pgproxy in front of it, with a demo OIDC issuer minting the token used as password;
- ``pgbench``: building pgbench command lines and parsing their output;
- ``report``: medians, ratios, the text table and the JSON document.
"""


class BenchError(Exception):
    """A failure that ends the benchmark with a readable message instead of a traceback."""
