"""pgproxy: an identity-aware PostgreSQL wire proxy."""

__version__ = "0.1.0"
