"""Which functions and operators a read may call, and what the others do.

A call is safe (it keeps a SELECT a read) only when its name is on the allow-list below and it is
unqualified or qualified with ``pg_catalog``: built-in functions without side effects (string, math,
date/time, aggregates, window, json, arrays, ranges, text search, formatting, catalog information and
statistics getters). Every other call is unsafe, and its category says what it may do: ``nextval`` writes,
``set_config`` changes privileges, ``pg_terminate_backend`` is a utility, and anything unknown,
user-defined or qualified outside ``pg_catalog`` is procedural. Functions that read or write files on the
database server are refused outright.

The allow-list is exact names, never prefixes or patterns: a pattern would also admit a user-defined
function that merely shares the prefix. Names only are known here (argument types need the catalog), so a
user-defined overload of an allow-listed name in a schema on the search path is not detected; the upstream
role must not be able to create functions there. This module does no parsing and no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgproxy.sql.statement import Category, strictest_category


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Built-in functions without side effects (checked against pg_proc: immutable or stable, or volatile
# only through randomness, clocks or monitoring reads).
_SAFE_CORE = _names(
    """
    abbrev abs acos acosd acosh age any_value area array_agg array_append array_cat array_dims array_fill
    array_length array_lower array_ndims array_position array_positions array_prepend array_remove array_replace
    array_reverse array_sample array_shuffle array_sort array_to_string array_upper ascii asin asind asinh atan
    atan2 atan2d atand atanh avg bit bit_and bit_count bit_length bit_or bit_xor bool bool_and bool_or box
    bpchar broadcast btrim cardinality casefold cash_words cbrt ceil ceiling center char char_length
    character_length chr cidr circle clock_timestamp col_description concat concat_ws convert convert_from
    convert_to corr cos cosd cosh cot cotd count covar_pop covar_samp crc32 crc32c cume_dist current_database
    current_query current_schema current_schemas current_setting current_user currval date date_add date_bin
    date_part date_subtract date_trunc datemultirange daterange decode degrees dense_rank diagonal diameter div
    encode enum_first enum_last enum_range erf erfc every exp extract factorial family first_value float4 float8
    floor format format_type gamma gcd gen_random_uuid generate_series generate_subscripts get_bit get_byte
    getdatabaseencoding getpgusername height host hostmask inet_client_addr inet_client_port inet_server_addr
    inet_server_port initcap int2 int4 int4multirange int4range int8 int8multirange int8range interval
    is_normalized isclosed isempty isfinite ishorizontal isopen isparallel isperp isvertical justify_days
    justify_hours justify_interval lag last_value lastval lcm lead left length lgamma like like_escape line ln
    log log10 lower lower_inc lower_inf lpad lseg ltrim macaddr macaddr8 macaddr8_set7bit make_date
    make_interval make_time make_timestamp make_timestamptz masklen max md5 min min_scale mod mode money
    multirange mxid_age name nameconcatoid netmask network normalize notlike now npoints nth_value ntile
    num_nonnulls num_nulls numeric nummultirange numrange obj_description octet_length oid oidvectortypes
    overlaps overlay parse_ident path percent_rank percentile_cont percentile_disc pi point polygon position pow
    power quote_ident quote_literal quote_nullable radians radius random random_normal range_agg
    range_intersect_agg range_merge rank regclass regexp_count regexp_instr regexp_like regexp_match
    regexp_matches regexp_replace regexp_split_to_array regexp_split_to_table regexp_substr regr_avgx regr_avgy
    regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy repeat replace reverse right round
    row_number rpad rtrim satisfies_hash_partition scale session_user set_bit set_byte set_masklen setseed
    sha224 sha256 sha384 sha512 shobj_description sign similar_escape similar_to_escape sin sind sinh slope
    split_part sqrt statement_timestamp stddev stddev_pop stddev_samp string_agg string_to_array string_to_table
    strpos substr substring sum system_user tan tand tanh text textlen time timeofday timestamp timestamptz
    timetz timezone to_ascii to_bin to_char to_date to_hex to_number to_oct to_regclass to_regcollation
    to_regnamespace to_regoper to_regoperator to_regproc to_regprocedure to_regrole to_regtype to_timestamp
    transaction_timestamp translate trim_array trim_scale trunc tsmultirange tsrange tstzmultirange tstzrange
    txid_current_if_assigned txid_current_snapshot txid_snapshot_xip txid_snapshot_xmax txid_snapshot_xmin
    txid_status txid_visible_in_snapshot unistr unnest upper upper_inc upper_inf uuid_extract_timestamp
    uuid_extract_version uuidv4 uuidv7 var_pop var_samp varbit varchar variance version width width_bucket xid
    """
)
_SAFE_JSON_XML_TEXT_SEARCH = _names(
    """
    array_to_json json_agg json_agg_strict json_array_elements json_array_elements_text json_array_length
    json_build_array json_build_object json_each json_each_text json_object json_object_agg
    json_object_agg_strict json_object_agg_unique json_object_agg_unique_strict json_object_keys
    json_populate_record json_populate_recordset json_scalar json_strip_nulls json_to_record json_to_recordset
    json_to_tsvector json_typeof jsonb_agg jsonb_agg_strict jsonb_array_elements jsonb_array_elements_text
    jsonb_array_length jsonb_build_array jsonb_build_object jsonb_each jsonb_each_text jsonb_insert jsonb_object
    jsonb_object_agg jsonb_object_agg_strict jsonb_object_agg_unique jsonb_object_agg_unique_strict
    jsonb_object_keys jsonb_path_exists jsonb_path_exists_tz jsonb_path_match jsonb_path_match_tz
    jsonb_path_query jsonb_path_query_array jsonb_path_query_array_tz jsonb_path_query_first
    jsonb_path_query_first_tz jsonb_path_query_tz jsonb_populate_record jsonb_populate_recordset jsonb_pretty
    jsonb_set jsonb_set_lax jsonb_strip_nulls jsonb_to_record jsonb_to_recordset jsonb_to_tsvector jsonb_typeof
    row_to_json to_json to_jsonb
    xml xml_is_well_formed xml_is_well_formed_content xml_is_well_formed_document xmlagg xmlcomment xmlexists
    xpath xpath_exists
    array_to_tsvector get_current_ts_config numnode phraseto_tsquery plainto_tsquery querytree setweight strip
    to_tsquery to_tsvector ts_debug ts_delete ts_filter ts_headline ts_lexize ts_parse ts_rank ts_rank_cd
    ts_rewrite ts_token_type tsquery_phrase tsvector_to_array websearch_to_tsquery
    json_extract_path json_extract_path_text jsonb_extract_path jsonb_extract_path_text jsonb_exists
    jsonb_exists_any jsonb_exists_all jsonb_contains jsonb_contained jsonb_concat jsonb_delete jsonb_delete_path
    starts_with xmltext to_regtypemod
    """
)
# Function-call syntax for a cast to a built-in type (``uuid(x)``, ``regrole('r')``): no pg_proc entry.
_SAFE_CASTS = _names(
    """
    regrole regnamespace regproc regprocedure regoper regoperator regtype regcollation regconfig regdictionary
    uuid json jsonb bytea inet tsvector tsquery
    """
)
# Catalog information, privilege checks and visibility: what psql's \d, drivers, ORMs and pg_dump call.
_SAFE_CATALOG = _names(
    """
    acldefault aclexplode has_any_column_privilege has_column_privilege has_database_privilege
    has_foreign_data_wrapper_privilege has_function_privilege has_language_privilege has_largeobject_privilege
    has_parameter_privilege has_schema_privilege has_sequence_privilege has_server_privilege has_table_privilege
    has_tablespace_privilege has_type_privilege makeaclitem pg_collation_is_visible pg_conversion_is_visible
    pg_function_is_visible pg_has_role pg_opclass_is_visible pg_operator_is_visible pg_opfamily_is_visible
    pg_statistics_obj_is_visible pg_table_is_visible pg_ts_config_is_visible pg_ts_dict_is_visible
    pg_ts_parser_is_visible pg_ts_template_is_visible pg_type_is_visible row_security_active
    pg_available_extension_versions pg_available_extensions pg_available_wal_summaries pg_backend_pid
    pg_basetype pg_blocking_pids pg_char_to_encoding pg_client_encoding pg_collation_actual_version
    pg_collation_for pg_column_compression pg_column_is_updatable pg_column_size pg_column_toast_chunk_id
    pg_conf_load_time pg_config pg_control_checkpoint pg_control_init pg_control_recovery pg_control_system
    pg_current_snapshot pg_current_wal_flush_lsn pg_current_wal_insert_lsn pg_current_wal_lsn
    pg_current_xact_id_if_assigned pg_cursor pg_database_collation_actual_version pg_database_size
    pg_describe_object pg_encoding_max_length pg_encoding_to_char pg_extension_update_paths pg_filenode_relation
    pg_get_acl pg_get_backend_memory_contexts pg_get_catalog_foreign_keys pg_get_constraintdef pg_get_expr
    pg_get_function_arg_default pg_get_function_arguments pg_get_function_identity_arguments
    pg_get_function_result pg_get_function_sqlbody pg_get_functiondef pg_get_indexdef pg_get_keywords
    pg_get_loaded_modules pg_get_multixact_members pg_get_object_address pg_get_partition_constraintdef
    pg_get_partkeydef pg_get_publication_tables pg_get_replica_identity_index pg_get_replication_slots
    pg_get_ruledef pg_get_serial_sequence pg_get_shmem_allocations pg_get_statisticsobjdef
    pg_get_statisticsobjdef_columns pg_get_statisticsobjdef_expressions pg_get_triggerdef pg_get_userbyid
    pg_get_viewdef pg_get_wal_replay_pause_state pg_get_wal_resource_managers pg_get_wal_summarizer_state
    pg_identify_object pg_identify_object_as_address pg_index_column_has_property pg_index_has_property
    pg_indexam_has_property pg_indexam_progress_phasename pg_indexes_size pg_input_error_info pg_input_is_valid
    pg_is_in_recovery pg_is_other_temp_schema pg_is_wal_replay_paused pg_jit_available pg_last_committed_xact
    pg_last_wal_receive_lsn pg_last_wal_replay_lsn pg_last_xact_replay_timestamp pg_listening_channels
    pg_lock_status pg_lsn pg_mcv_list_items pg_my_temp_schema pg_notification_queue_usage pg_numa_available
    pg_options_to_table pg_partition_ancestors pg_partition_root pg_partition_tree pg_postmaster_start_time
    pg_prepared_statement pg_prepared_xact pg_relation_filenode pg_relation_filepath pg_relation_is_publishable
    pg_relation_is_updatable pg_relation_size pg_replication_origin_oid pg_replication_origin_session_is_setup
    pg_safe_snapshot_blocking_pids pg_sequence_last_value pg_sequence_parameters pg_settings_get_flags
    pg_show_all_settings pg_show_replication_origin_status pg_size_bytes pg_size_pretty pg_snapshot_xip
    pg_snapshot_xmax pg_snapshot_xmin pg_split_walfile_name pg_stat_clear_snapshot pg_stat_have_stats
    pg_table_size pg_tablespace_databases pg_tablespace_location pg_tablespace_size pg_timezone_abbrevs
    pg_timezone_names pg_total_relation_size pg_trigger_depth pg_typeof pg_visible_in_snapshot pg_wal_lsn_diff
    pg_wal_summary_contents pg_walfile_name pg_walfile_name_offset pg_xact_commit_timestamp
    pg_xact_commit_timestamp_origin pg_xact_status
    """
)
# Statistics getters, named one by one (a user function may share the prefix).
_SAFE_STATS = frozenset(
    f"pg_stat_get_{suffix}"
    for suffix in _names(
        """
    activity analyze_count archiver autoanalyze_count autovacuum_count backend_activity backend_activity_start
    backend_client_addr backend_client_port backend_dbid backend_idset backend_io backend_pid backend_start
    backend_subxact backend_userid backend_wait_event backend_wait_event_type backend_wal backend_xact_start
    bgwriter_buf_written_checkpoints bgwriter_buf_written_clean bgwriter_maxwritten_clean
    bgwriter_requested_checkpoints bgwriter_stat_reset_time bgwriter_timed_checkpoints blocks_fetched blocks_hit
    buf_alloc buf_fsync_backend buf_written_backend checkpoint_sync_time checkpoint_write_time
    checkpointer_buffers_written checkpointer_num_performed checkpointer_num_requested checkpointer_num_timed
    checkpointer_restartpoints_performed checkpointer_restartpoints_requested checkpointer_restartpoints_timed
    checkpointer_slru_written checkpointer_stat_reset_time checkpointer_sync_time checkpointer_write_time
    db_active_time db_blk_read_time db_blk_write_time db_blocks_fetched db_blocks_hit db_checksum_failures
    db_checksum_last_failure db_conflict_all db_conflict_bufferpin db_conflict_lock db_conflict_logicalslot
    db_conflict_snapshot db_conflict_startup_deadlock db_conflict_tablespace db_deadlocks
    db_idle_in_transaction_time db_numbackends db_session_time db_sessions db_sessions_abandoned
    db_sessions_fatal db_sessions_killed db_stat_reset_time db_temp_bytes db_temp_files db_tuples_deleted
    db_tuples_fetched db_tuples_inserted db_tuples_returned db_tuples_updated db_xact_commit db_xact_rollback
    dead_tuples function_calls function_self_time function_total_time ins_since_vacuum io last_analyze_time
    last_autoanalyze_time last_autovacuum_time last_vacuum_time lastscan live_tuples mod_since_analyze numscans
    progress_info recovery_prefetch replication_slot slru snapshot_timestamp subscription subscription_stats
    total_analyze_time total_autoanalyze_time total_autovacuum_time total_vacuum_time tuples_deleted
    tuples_fetched tuples_hot_updated tuples_inserted tuples_newpage_updated tuples_returned tuples_updated
    vacuum_count wal wal_receiver wal_senders xact_blocks_fetched xact_blocks_hit xact_function_calls
    xact_function_self_time xact_function_total_time xact_numscans xact_tuples_deleted xact_tuples_fetched
    xact_tuples_hot_updated xact_tuples_inserted xact_tuples_newpage_updated xact_tuples_returned
    xact_tuples_updated
    """
    )
)
SAFE_FUNCTIONS = _SAFE_CORE | _SAFE_JSON_XML_TEXT_SEARCH | _SAFE_CASTS | _SAFE_CATALOG | _SAFE_STATS

# Helpers of the information_schema views that JDBC's metadata queries call by qualified name. Only
# superusers can create functions in information_schema.
SAFE_QUALIFIED = frozenset(
    f"information_schema._pg_{suffix}"
    for suffix in _names(
        """
    char_max_length char_octet_length datetime_precision expandarray index_position interval_type
    numeric_precision numeric_precision_radix numeric_scale truetypid truetypmod
    """
    )
)

# Functions that read or write files on the database server: refused whatever the policy says, in any
# schema (a function of that name elsewhere is refused too rather than guessed harmless).
SERVER_FILE_FUNCTIONS = _names(
    """
    pg_read_file pg_read_file_old pg_read_binary_file pg_stat_file pg_ls_dir pg_ls_logdir pg_ls_waldir
    pg_ls_tmpdir pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir pg_ls_replslotdir
    pg_ls_summariesdir lo_import lo_export pg_file_write pg_file_rename pg_file_unlink pg_file_sync
    pg_file_read pg_file_length pg_logdir_ls pg_current_logfile pg_hba_file_rules pg_ident_file_mappings
    pg_show_all_file_settings
    """
)

_LARGE_OBJECT_WRITES = _names(
    """
    lo_open lo_close lo_creat lo_create lo_unlink lo_truncate lo_truncate64 lo_lseek lo_lseek64 lo_tell
    lo_tell64 lo_get lo_put lo_from_bytea loread lowrite
    """
)
_UTILITY = _names(
    """
    pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_rotate_logfile_old
    pg_switch_wal pg_notify pg_sleep pg_sleep_for pg_sleep_until pg_advisory_lock pg_advisory_lock_shared
    pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all pg_advisory_xact_lock
    pg_advisory_xact_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared pg_try_advisory_xact_lock
    pg_try_advisory_xact_lock_shared pg_create_restore_point pg_log_backend_memory_contexts
    pg_log_standby_snapshot pg_promote pg_wal_replay_pause pg_wal_replay_resume pg_backup_start pg_backup_stop
    pg_export_snapshot pg_stat_reset pg_stat_reset_shared pg_stat_reset_single_table_counters
    pg_stat_reset_single_function_counters pg_stat_reset_slru pg_stat_reset_replication_slot
    pg_stat_reset_subscription_stats pg_stat_reset_backend_stats pg_stat_force_next_flush
    pg_create_physical_replication_slot pg_create_logical_replication_slot pg_drop_replication_slot
    pg_copy_physical_replication_slot pg_copy_logical_replication_slot pg_replication_slot_advance
    pg_sync_replication_slots pg_logical_slot_get_changes pg_logical_slot_get_binary_changes
    pg_logical_slot_peek_changes pg_logical_slot_peek_binary_changes pg_replication_origin_create
    pg_replication_origin_drop pg_replication_origin_advance pg_replication_origin_progress
    pg_replication_origin_session_setup pg_replication_origin_session_reset pg_replication_origin_session_progress
    pg_replication_origin_xact_setup pg_replication_origin_xact_reset gin_clean_pending_list brin_summarize_range
    brin_summarize_new_values brin_desummarize_range pg_clear_relation_stats pg_clear_attribute_stats
    pg_restore_relation_stats pg_restore_attribute_stats
    """
)
# Functions that run a query given as text, or read whole tables or schemas: they defeat both the
# statement's classification and column lineage.
_QUERY_RUNNERS = _names(
    """
    query_to_xml query_to_xmlschema query_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema table_to_xml
    table_to_xmlschema table_to_xml_and_xmlschema schema_to_xml schema_to_xmlschema schema_to_xml_and_xmlschema
    database_to_xml database_to_xmlschema database_to_xml_and_xmlschema ts_stat dblink dblink_exec
    dblink_open dblink_fetch dblink_send_query dblink_get_result dblink_connect dblink_connect_u
    """
)

DANGER: dict[str, Category] = {
    "nextval": Category.WRITE,
    "setval": Category.WRITE,
    "txid_current": Category.WRITE,  # assigns a transaction ID: refused in a read-only transaction
    "pg_current_xact_id": Category.WRITE,
    "pg_logical_emit_message": Category.WRITE,
    "set_config": Category.PRIVILEGE,  # set_config('role' | 'search_path' | …): SET by another name
    "pg_import_system_collations": Category.DDL,
    **dict.fromkeys(_LARGE_OBJECT_WRITES, Category.WRITE),
    **dict.fromkeys(_UTILITY, Category.UTILITY),
    **dict.fromkeys(_QUERY_RUNNERS, Category.PROCEDURAL),
}

# Operator names of pg_catalog, and the names the grammar itself gives to BETWEEN forms.
SAFE_OPERATORS = _names(
    """
    !! !~ !~* !~~ !~~* # ## #- #> #>> % & && &< &<| &> * *< *<= *<> *= *> *>= + - -> ->> -|- / < <-> << <<= <<|
    <= <> <@ <^ = > >= >> >>= >^ ? ?# ?& ?- ?-| ?| ?|| @ @-@ @> @? @@ @@@ ^ ^@ | |&> |/ |>> || ||/ ~ ~* ~<=~ ~<~
    ~= ~>=~ ~>~ ~~ ~~*
    """
) | frozenset({"BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"})
SAFE_TABLESAMPLE_METHODS = frozenset({"bernoulli", "system"})

_CATALOG = "pg_catalog"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one call does: ``category`` None when it is safe in a read."""

    category: Category | None = None
    refusal: str | None = None


SAFE = Verdict()
_PROCEDURAL = Verdict(Category.PROCEDURAL)


def display_name(parts: tuple[str, ...]) -> str:
    """``schema.name`` or ``name``, as folded by the parser."""
    return ".".join(parts)


def judge_function(parts: tuple[str, ...], nargs: int) -> Verdict:
    """The verdict on a call of the function named ``parts`` (qualified or not) with ``nargs`` arguments."""
    if not parts:
        return _PROCEDURAL
    name = parts[-1]
    if name in SERVER_FILE_FUNCTIONS:
        return Verdict(
            Category.PROCEDURAL,
            f"{display_name(parts)}() reads or writes files on the database server; pgproxy never forwards it",
        )
    builtin = len(parts) == 1 or (len(parts) == 2 and parts[0] == _CATALOG)
    danger = DANGER.get(name)
    if builtin:
        if danger is not None:
            return Verdict(danger)
        if name == "ts_rewrite" and nargs == 2:
            return _PROCEDURAL  # ts_rewrite(query, 'SELECT …') runs the query text
        return SAFE if name in SAFE_FUNCTIONS else _PROCEDURAL
    if len(parts) == 2 and display_name(parts) in SAFE_QUALIFIED:
        return SAFE
    # Qualified outside pg_catalog: user-defined, whatever its name says; never less than the built-in.
    return Verdict(strictest_category(Category.PROCEDURAL, danger) if danger is not None else Category.PROCEDURAL)


def judge_operator(parts: tuple[str, ...]) -> Verdict:
    """The verdict on an operator (``OPERATOR(schema.op)`` arrives qualified)."""
    builtin = len(parts) == 1 or (len(parts) == 2 and parts[0] == _CATALOG)
    return SAFE if builtin and parts[-1] in SAFE_OPERATORS else _PROCEDURAL  # () is not builtin


def judge_tablesample(parts: tuple[str, ...]) -> Verdict:
    """The verdict on a TABLESAMPLE method (a handler function: built-in or from an extension)."""
    builtin = len(parts) == 1 or (len(parts) == 2 and parts[0] == _CATALOG)
    return SAFE if builtin and parts[-1] in SAFE_TABLESAMPLE_METHODS else _PROCEDURAL  # () is not builtin


def recorded_category(name: str, unsafe: bool) -> Category | None:
    """The category of a call recorded as ``name`` in a Statement (whose parts are no longer known).

    Used when a statement is recomputed from another (EXECUTE of a prepared statement): a recorded
    unsafe name is at least procedural unless it is an unqualified name with a known lesser danger.
    """
    if not unsafe:
        return None
    if "." not in name:
        return judge_function((name,), -1).category or Category.PROCEDURAL
    danger = DANGER.get(name.rsplit(".", 1)[-1])
    return Category.PROCEDURAL if danger is None else strictest_category(Category.PROCEDURAL, danger)
