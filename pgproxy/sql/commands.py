"""The fixed meaning of each kind of utility statement: its category and PostgreSQL's name for it.

``COMMANDS`` maps a parse node type to (category, command) for statements whose category does not depend
on their content; ``object_words`` names the object type of DROP / ALTER … RENAME / COMMENT ON and the
like, the way PostgreSQL's command tags do. A node type missing here is UNKNOWN (``classify`` decides the
statements that need a closer look). Pure data: no parsing, no I/O.
"""

from __future__ import annotations

from pgproxy.sql.statement import Category

_DDL = Category.DDL
_PRIV = Category.PRIVILEGE
_UTIL = Category.UTILITY

COMMANDS: dict[str, tuple[Category, str]] = {
    # DDL
    "CreateStmt": (_DDL, "CREATE TABLE"),
    "CreateForeignTableStmt": (_DDL, "CREATE FOREIGN TABLE"),
    "ViewStmt": (_DDL, "CREATE VIEW"),
    "IndexStmt": (_DDL, "CREATE INDEX"),
    "CreateSeqStmt": (_DDL, "CREATE SEQUENCE"),
    "AlterSeqStmt": (_DDL, "ALTER SEQUENCE"),
    "CreateTrigStmt": (_DDL, "CREATE TRIGGER"),
    "CreateEventTrigStmt": (_DDL, "CREATE EVENT TRIGGER"),
    "AlterEventTrigStmt": (_DDL, "ALTER EVENT TRIGGER"),
    "RuleStmt": (_DDL, "CREATE RULE"),
    "CreateDomainStmt": (_DDL, "CREATE DOMAIN"),
    "AlterDomainStmt": (_DDL, "ALTER DOMAIN"),
    "CompositeTypeStmt": (_DDL, "CREATE TYPE"),
    "CreateEnumStmt": (_DDL, "CREATE TYPE"),
    "CreateRangeStmt": (_DDL, "CREATE TYPE"),
    "AlterEnumStmt": (_DDL, "ALTER TYPE"),
    "AlterTypeStmt": (_DDL, "ALTER TYPE"),
    "CreateExtensionStmt": (_DDL, "CREATE EXTENSION"),
    "AlterExtensionStmt": (_DDL, "ALTER EXTENSION"),
    "AlterExtensionContentsStmt": (_DDL, "ALTER EXTENSION"),
    "CreateFdwStmt": (_DDL, "CREATE FOREIGN DATA WRAPPER"),
    "AlterFdwStmt": (_DDL, "ALTER FOREIGN DATA WRAPPER"),
    "CreateForeignServerStmt": (_DDL, "CREATE SERVER"),
    "AlterForeignServerStmt": (_DDL, "ALTER SERVER"),
    "ImportForeignSchemaStmt": (_DDL, "IMPORT FOREIGN SCHEMA"),
    "CreatePLangStmt": (_DDL, "CREATE LANGUAGE"),
    "CreateCastStmt": (_DDL, "CREATE CAST"),
    "CreateConversionStmt": (_DDL, "CREATE CONVERSION"),
    "CreateOpClassStmt": (_DDL, "CREATE OPERATOR CLASS"),
    "CreateOpFamilyStmt": (_DDL, "CREATE OPERATOR FAMILY"),
    "AlterOpFamilyStmt": (_DDL, "ALTER OPERATOR FAMILY"),
    "AlterOperatorStmt": (_DDL, "ALTER OPERATOR"),
    "CreateTransformStmt": (_DDL, "CREATE TRANSFORM"),
    "CreateAmStmt": (_DDL, "CREATE ACCESS METHOD"),
    "CreatePublicationStmt": (_DDL, "CREATE PUBLICATION"),
    "AlterPublicationStmt": (_DDL, "ALTER PUBLICATION"),
    "CreateSubscriptionStmt": (_DDL, "CREATE SUBSCRIPTION"),
    "AlterSubscriptionStmt": (_DDL, "ALTER SUBSCRIPTION"),
    "DropSubscriptionStmt": (_DDL, "DROP SUBSCRIPTION"),
    "CreateStatsStmt": (_DDL, "CREATE STATISTICS"),
    "AlterStatsStmt": (_DDL, "ALTER STATISTICS"),
    "CreateTableSpaceStmt": (_DDL, "CREATE TABLESPACE"),
    "DropTableSpaceStmt": (_DDL, "DROP TABLESPACE"),
    "AlterTableSpaceOptionsStmt": (_DDL, "ALTER TABLESPACE"),
    "AlterTableMoveAllStmt": (_DDL, "ALTER TABLE"),
    "AlterCollationStmt": (_DDL, "ALTER COLLATION"),
    "AlterDatabaseStmt": (_DDL, "ALTER DATABASE"),
    "AlterDatabaseRefreshCollStmt": (_DDL, "ALTER DATABASE"),
    "AlterTSConfigurationStmt": (_DDL, "ALTER TEXT SEARCH CONFIGURATION"),
    "AlterTSDictionaryStmt": (_DDL, "ALTER TEXT SEARCH DICTIONARY"),
    "CreateSchemaStmt": (_DDL, "CREATE SCHEMA"),
    "CreatedbStmt": (_DDL, "CREATE DATABASE"),
    "DropdbStmt": (_DDL, "DROP DATABASE"),
    "CommentStmt": (_DDL, "COMMENT"),
    "TruncateStmt": (_DDL, "TRUNCATE TABLE"),
    "RefreshMatViewStmt": (_DDL, "REFRESH MATERIALIZED VIEW"),
    # privileges and identities
    "CreateRoleStmt": (_PRIV, "CREATE ROLE"),
    "AlterRoleStmt": (_PRIV, "ALTER ROLE"),
    "AlterRoleSetStmt": (_PRIV, "ALTER ROLE"),
    "DropRoleStmt": (_PRIV, "DROP ROLE"),
    "GrantRoleStmt": (_PRIV, "GRANT ROLE"),
    "AlterDefaultPrivilegesStmt": (_PRIV, "ALTER DEFAULT PRIVILEGES"),
    "CreatePolicyStmt": (_PRIV, "CREATE POLICY"),
    "AlterPolicyStmt": (_PRIV, "ALTER POLICY"),
    "CreateUserMappingStmt": (_PRIV, "CREATE USER MAPPING"),
    "AlterUserMappingStmt": (_PRIV, "ALTER USER MAPPING"),
    "DropUserMappingStmt": (_PRIV, "DROP USER MAPPING"),
    "SecLabelStmt": (_PRIV, "SECURITY LABEL"),
    "AlterSystemStmt": (_PRIV, "ALTER SYSTEM"),
    "AlterDatabaseSetStmt": (_PRIV, "ALTER DATABASE"),
    "ReassignOwnedStmt": (_PRIV, "REASSIGN OWNED"),
    "DropOwnedStmt": (_PRIV, "DROP OWNED"),
    # code
    "DoStmt": (Category.PROCEDURAL, "DO"),
    "CallStmt": (Category.PROCEDURAL, "CALL"),
    "LoadStmt": (Category.PROCEDURAL, "LOAD"),
    # maintenance, locks and notifications
    "ReindexStmt": (_UTIL, "REINDEX"),
    "ClusterStmt": (_UTIL, "CLUSTER"),
    "CheckPointStmt": (_UTIL, "CHECKPOINT"),
    "ListenStmt": (_UTIL, "LISTEN"),
    "UnlistenStmt": (_UTIL, "UNLISTEN"),
    "NotifyStmt": (_UTIL, "NOTIFY"),
    "LockStmt": (_UTIL, "LOCK TABLE"),
    # transactions and cursors
    "ConstraintsSetStmt": (Category.TRANSACTION, "SET CONSTRAINTS"),
    "VariableShowStmt": (Category.READ, "SHOW"),
}

_OBJECT_WORDS = {
    "OBJECT_ACCESS_METHOD": "ACCESS METHOD",
    "OBJECT_AGGREGATE": "AGGREGATE",
    "OBJECT_CAST": "CAST",
    "OBJECT_COLLATION": "COLLATION",
    "OBJECT_CONVERSION": "CONVERSION",
    "OBJECT_DATABASE": "DATABASE",
    "OBJECT_DOMAIN": "DOMAIN",
    "OBJECT_DOMCONSTRAINT": "DOMAIN",
    "OBJECT_EVENT_TRIGGER": "EVENT TRIGGER",
    "OBJECT_EXTENSION": "EXTENSION",
    "OBJECT_FDW": "FOREIGN DATA WRAPPER",
    "OBJECT_FOREIGN_SERVER": "SERVER",
    "OBJECT_FOREIGN_TABLE": "FOREIGN TABLE",
    "OBJECT_FUNCTION": "FUNCTION",
    "OBJECT_INDEX": "INDEX",
    "OBJECT_LANGUAGE": "LANGUAGE",
    "OBJECT_LARGEOBJECT": "LARGE OBJECT",
    "OBJECT_MATVIEW": "MATERIALIZED VIEW",
    "OBJECT_OPCLASS": "OPERATOR CLASS",
    "OBJECT_OPERATOR": "OPERATOR",
    "OBJECT_OPFAMILY": "OPERATOR FAMILY",
    "OBJECT_PARAMETER_ACL": "PARAMETER",
    "OBJECT_POLICY": "POLICY",
    "OBJECT_PROCEDURE": "PROCEDURE",
    "OBJECT_PUBLICATION": "PUBLICATION",
    "OBJECT_ROLE": "ROLE",
    "OBJECT_ROUTINE": "ROUTINE",
    "OBJECT_RULE": "RULE",
    "OBJECT_SCHEMA": "SCHEMA",
    "OBJECT_SEQUENCE": "SEQUENCE",
    "OBJECT_SUBSCRIPTION": "SUBSCRIPTION",
    "OBJECT_STATISTIC_EXT": "STATISTICS",
    "OBJECT_TABLE": "TABLE",
    "OBJECT_TABLESPACE": "TABLESPACE",
    "OBJECT_TRANSFORM": "TRANSFORM",
    "OBJECT_TRIGGER": "TRIGGER",
    "OBJECT_TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "OBJECT_TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "OBJECT_TSPARSER": "TEXT SEARCH PARSER",
    "OBJECT_TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OBJECT_TYPE": "TYPE",
    "OBJECT_USER_MAPPING": "USER MAPPING",
    "OBJECT_VIEW": "VIEW",
}

# Object types that are relations (their names are recorded as relations written).
RELATION_OBJECTS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX", "OBJECT_SEQUENCE", "OBJECT_FOREIGN_TABLE"}
)
# Object types whose change is a change of privileges.
PRIVILEGE_OBJECTS = frozenset({"OBJECT_ROLE", "OBJECT_POLICY", "OBJECT_USER_MAPPING"})

# ALTER TABLE sub-commands that change who may see or own what.
PRIVILEGE_SUBCOMMANDS = frozenset(
    {"AT_ChangeOwner", "AT_EnableRowSecurity", "AT_DisableRowSecurity", "AT_ForceRowSecurity", "AT_NoForceRowSecurity"}
)


def object_words(object_type: str | None) -> str:
    """``OBJECT_MATVIEW`` → ``MATERIALIZED VIEW``; an unknown type gives ``OBJECT``."""
    return _OBJECT_WORDS.get(object_type or "", "OBJECT")
