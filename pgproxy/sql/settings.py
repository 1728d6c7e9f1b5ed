"""What changing a run-time setting (SET, RESET, SET LOCAL) does, by the setting's name.

Settings that decide who the session is or what it may see or do (role, search_path, read-only
defaults, row security, and every custom dotted setting, since those often drive row-level security)
are PRIVILEGE. A short allow-list of settings that only change presentation, planning, memory or time
limits is SESSION, and so are the two that change how text is read (see ``READING_SETTINGS``).
Every other setting is UNKNOWN: new settings are not assumed harmless. Names are compared in lower
case, as PostgreSQL compares them. Pure data and lookups: no parsing, no I/O.
"""

from __future__ import annotations

from pgproxy.session.params import PASSABLE_SETTINGS
from pgproxy.sql.statement import Category

PRIVILEGE_SETTINGS = frozenset(
    {
        "role",
        "session_authorization",
        "search_path",  # re-points unqualified names (and defeats masking by name)
        "default_transaction_read_only",  # pgproxy's read-only sessions rely on it
        "transaction_read_only",
        "application_name",  # carries the caller's identity into pg_stat_activity and logs
        "backslash_quote",
        "session_replication_role",  # replica: triggers and foreign keys stop firing
        "row_security",
        "createrole_self_grant",
        "all",  # RESET ALL
    }
)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Settings that change how the server reads statement text. Changing them is SESSION (drivers and
# libpq's PQsetClientEncoding do it at connect) only because the gate makes it safe: it judges no
# further text until the server has reported the new value, and ends the session if pgproxy cannot
# read text that way (standard_conforming_strings off, an encoding that hides ASCII bytes).
READING_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})

SESSION_SETTINGS = (PASSABLE_SETTINGS - {"application_name"}) | READING_SETTINGS | _names(
    """
    escape_string_warning
    enable_async_append enable_bitmapscan enable_distinct_reordering enable_gathermerge
    enable_group_by_reordering enable_hashagg enable_hashjoin enable_incremental_sort enable_indexonlyscan
    enable_indexscan enable_material enable_memoize enable_mergejoin enable_nestloop enable_parallel_append
    enable_parallel_hash enable_partition_pruning enable_partitionwise_aggregate enable_partitionwise_join
    enable_presorted_aggregate enable_self_join_elimination enable_seqscan enable_sort enable_tidscan
    geqo_effort geqo_generations geqo_pool_size geqo_seed geqo_selection_bias geqo_threshold
    constraint_exclusion cursor_tuple_fraction default_statistics_target from_collapse_limit join_collapse_limit
    plan_cache_mode recursive_worktable_factor jit jit_above_cost jit_inline_above_cost jit_optimize_above_cost
    jit_expressions jit_tuple_deforming seq_page_cost random_page_cost cpu_tuple_cost cpu_index_tuple_cost
    cpu_operator_cost parallel_setup_cost parallel_tuple_cost min_parallel_table_scan_size
    min_parallel_index_scan_size effective_cache_size effective_io_concurrency maintenance_io_concurrency
    io_combine_limit max_parallel_workers_per_gather max_parallel_maintenance_workers max_parallel_workers
    parallel_leader_participation work_mem maintenance_work_mem hash_mem_multiplier temp_buffers
    vacuum_buffer_usage_limit statement_timeout lock_timeout idle_in_transaction_session_timeout
    idle_session_timeout transaction_timeout timezone_abbreviations default_text_search_config xmlbinary
    xmloption client_min_messages check_function_bodies default_transaction_isolation
    default_transaction_deferrable transaction_isolation transaction_deferrable synchronous_commit
    gin_fuzzy_search_limit quote_all_identifiers default_table_access_method default_toast_compression
    default_tablespace stats_fetch_consistency
    """
)


def setting_category(name: str) -> Category:
    """PRIVILEGE, SESSION or UNKNOWN for setting or resetting ``name``."""
    key = name.lower()
    if key in PRIVILEGE_SETTINGS or "." in key:
        return Category.PRIVILEGE
    if key in SESSION_SETTINGS:
        return Category.SESSION
    return Category.UNKNOWN
