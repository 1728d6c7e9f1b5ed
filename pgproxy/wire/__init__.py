"""Sans-IO PostgreSQL protocol 3.0 codec: framing, one frozen dataclass per message, encode/decode.

Standard library only: this package never touches sockets, event loops or anything above it.
"""
