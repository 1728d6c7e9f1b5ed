"""Value maskers: one function per result column that turns a field's wire bytes into its masked bytes.

``value_masker`` is called once per column when a result's RowDescription is known; everything that
depends only on the column (strategy, type, format, length limit, client encoding, key) is decided
there, so the returned ``Masker`` does the least possible work per value. A masked value is always a
valid value of the column's type (a client must be able to decode it), else SQL NULL: redact, partial
and email only make sense for text types; hash is defined for text, integers, uuid and bytea.

Hashes are keyed HMAC-SHA256 (RFC 2104) over a canonical form of the value, so the text and binary formats of one
value, and one value in different client encodings, hash alike (joins on hashed columns keep working).

Fail closed: a masker never returns its input for a masked column and never raises; whatever it cannot
handle becomes None (NULL). Pure functions: no I/O, standard library only. This module knows nothing
of messages or rows (``rows`` and ``copy_out`` apply maskers) nor of which columns are masked.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Mapping
from enum import Enum
from functools import lru_cache

from pgproxy.masking.rules import ColumnRule
from pgproxy.masking.snapshot import TypeInfo
from pgproxy.policy.model import MaskStrategy


class TypeKind(Enum):
    TEXT = "text"  # text, varchar, bpchar, name, any string-category type (citext) and their domains
    INT2 = "int2"
    INT4 = "int4"
    INT8 = "int8"
    UUID = "uuid"
    BYTEA = "bytea"
    OTHER = "other"


NAME_OID = 19
TEXT_OID = 25
VARCHAR_OID = 1043
BPCHAR_OID = 1042

_BUILTIN: dict[int, TypeKind] = {
    TEXT_OID: TypeKind.TEXT,
    VARCHAR_OID: TypeKind.TEXT,
    BPCHAR_OID: TypeKind.TEXT,
    NAME_OID: TypeKind.TEXT,
    21: TypeKind.INT2,
    23: TypeKind.INT4,
    20: TypeKind.INT8,
    2950: TypeKind.UUID,
    17: TypeKind.BYTEA,
}
_INT_SIZES = {TypeKind.INT2: 2, TypeKind.INT4: 4, TypeKind.INT8: 8}
_NAME_MAX_BYTES = 63  # NAMEDATALEN - 1
_DOMAIN_DEPTH = 32  # domains over domains; a cycle in a (corrupt) snapshot must not loop forever

Masker = Callable[[bytes], bytes | None]


def type_kind(type_oid: int, types: Mapping[int, TypeInfo]) -> TypeKind:
    """How values of a type are masked: builtin OIDs first, then the catalog (domains to their base)."""
    oid = type_oid
    for _ in range(_DOMAIN_DEPTH):
        kind = _BUILTIN.get(oid)
        if kind is not None:
            return kind
        info = types.get(oid)
        if info is None:
            return TypeKind.OTHER
        if info.category == "S":
            return TypeKind.TEXT
        if info.base_oid == oid:
            return TypeKind.OTHER
        oid = info.base_oid
    return TypeKind.OTHER


def _null(_value: bytes) -> bytes | None:
    return None


@lru_cache(maxsize=64)
def ascii_compatible(codec: str) -> bool:
    """Whether ``codec`` writes ASCII text as the same ASCII bytes (every PostgreSQL client encoding
    does): the maskers write "*", "@", hex digits… as plain ASCII bytes."""
    ascii_text = "".join(map(chr, range(128)))
    try:
        return ascii_text.encode(codec) == ascii_text.encode("ascii")
    except (UnicodeError, LookupError):
        return False


@lru_cache(maxsize=64)
def ascii_safe(codec: str) -> bool:
    """Whether, besides, no multibyte character of ``codec`` contains an ASCII byte: then an ASCII byte
    in a value is always that ASCII character ("@", a delimiter, a quote), so values can be searched and
    split as bytes. pgproxy refuses the encodings that embed ASCII (SJIS, BIG5, GBK…), but the maskers
    stay correct if handed one: they then decode every value."""
    if not ascii_compatible(codec):
        return False
    if codec == "utf-8" or len(bytes(range(256)).decode(codec, "surrogateescape")) == 256:
        return True  # UTF-8 by design; a single-byte encoding trivially (the common cases, checked fast)
    for lead in range(0x80, 0x100):
        for trail in range(0x80):
            try:
                if len(bytes((lead, trail)).decode(codec)) == 1:
                    return False
            except UnicodeError:
                continue
    return True


class _Shape:
    """The length rules of a text column: varchar(n)/bpchar(n) hold n characters (bpchar padded with
    spaces), name at most 63 bytes; other text types are unlimited."""

    __slots__ = ("limit", "limit_bytes", "pad")

    def __init__(self, type_oid: int, typmod: int) -> None:
        self.limit = typmod - 4 if typmod >= 4 else None
        self.pad = type_oid == BPCHAR_OID and self.limit is not None
        self.limit_bytes = _NAME_MAX_BYTES if type_oid == NAME_OID else None

    @property
    def limited(self) -> bool:
        return self.limit is not None or self.limit_bytes is not None

    def fit(self, text: str, codec: str) -> bytes | None:
        """``text`` as a value of the column, encoded; None when it does not fit. Excess trailing spaces
        are dropped, as PostgreSQL's own varchar/bpchar casts do."""
        limit = self.limit
        if limit is not None:
            if len(text) > limit:
                if text[limit:].strip(" "):
                    return None
                text = text[:limit]
            if self.pad:
                text = text.ljust(limit)
        encoded = text.encode(codec, "surrogateescape")
        if self.limit_bytes is not None and len(encoded) > self.limit_bytes:
            return None
        return encoded


def value_masker(
    rule: ColumnRule,
    kind: TypeKind,
    *,
    binary: bool,
    typmod: int,
    codec: str,
    key: bytes,
    type_oid: int = 0,
) -> Masker:
    """The masker of one column. ``type_oid`` (the RowDescription's) only refines text columns:
    bpchar(n) values are padded to n, name values kept within 63 bytes; without it, ``typmod`` alone
    still limits varchar/bpchar lengths."""
    strategy = rule.strategy
    if strategy is MaskStrategy.NULL:
        return _null
    try:
        codec = codecs.lookup(codec).name
    except LookupError:
        return _null
    if not ascii_compatible(codec):
        return _null  # every output below is written as ASCII bytes
    if strategy is MaskStrategy.HASH:
        return _hash_masker(kind, binary, _Shape(type_oid, typmod), codec, key)
    if kind is not TypeKind.TEXT:
        return _null
    shape = _Shape(type_oid, typmod)
    if strategy is MaskStrategy.REDACT:
        try:
            constant = shape.fit(rule.text, codec)
        except UnicodeError:
            constant = None  # the replacement has characters the client encoding lacks
        return _null if constant is None else _constant(constant)
    if strategy is MaskStrategy.PARTIAL:
        return _partial_masker(rule.keep_first, rule.keep_last, codec)
    if strategy is MaskStrategy.EMAIL:
        return _email_masker(shape, codec)
    return _null


def _constant(value: bytes) -> Masker:
    def masker(_value: bytes) -> bytes | None:
        return value

    return masker


def _partial_masker(keep_first: int, keep_last: int, codec: str) -> Masker:
    kept = keep_first + keep_last
    bytes_ok = ascii_safe(codec)  # an all-ASCII value is then one character per byte

    def mask(text: str) -> str:
        n = len(text)
        if n <= kept:  # never reveal a short value whole
            return "*" * n
        return text[:keep_first] + "*" * (n - kept) + text[n - keep_last :]

    def masker(value: bytes) -> bytes | None:
        try:
            if bytes_ok and value.isascii():
                n = len(value)
                if n <= kept:
                    return b"*" * n
                return value[:keep_first] + b"*" * (n - kept) + value[n - keep_last :]
            return mask(value.decode(codec, "surrogateescape")).encode(codec, "surrogateescape")
        except Exception:
            return None

    # Same character count as the input, so any length limit the input met is met.
    return masker


def _email_masker(shape: _Shape, codec: str) -> Masker:
    if ascii_safe(codec) and not shape.limited:

        def fast(value: bytes) -> bytes | None:
            at = value.rfind(b"@")
            return b"***" if at < 0 else b"***@" + value[at + 1 :]

        return fast

    def masker(value: bytes) -> bytes | None:
        try:
            text = value.decode(codec, "surrogateescape")
            _, at, domain = text.rpartition("@")
            return shape.fit("***@" + domain if at else "***", codec)
        except Exception:
            return None

    return masker


# --- hash ---------------------------------------------------------------------------------------------

_Canon = Callable[[bytes], bytes | None]
_Out = Callable[[bytes], bytes]


def _hash_masker(kind: TypeKind, binary: bool, shape: _Shape, codec: str, key: bytes) -> Masker:
    canon = _canonical(kind, binary, codec)
    out = _hash_output(kind, binary, shape, codec)
    if canon is None or out is None:
        return _null
    digest = _hmac_sha256(key)

    def masker(value: bytes) -> bytes | None:
        try:
            data = canon(value)
            return None if data is None else out(digest(data))
        except Exception:
            return None

    return masker


_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


def _hmac_sha256(key: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 (RFC 2104) with the keyed inner and outer states computed once: per value two state
    copies instead of ``hmac.digest``'s full key setup, three times faster with OpenSSL 3."""
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(key.translate(_IPAD))
    outer = hashlib.sha256(key.translate(_OPAD))

    def digest(data: bytes) -> bytes:
        state = inner.copy()
        state.update(data)
        result = outer.copy()
        result.update(state.digest())
        return result.digest()

    return digest


def _canonical(kind: TypeKind, binary: bool, codec: str) -> _Canon | None:
    """The bytes hashed for a value: the same for the text and binary formats of one value."""
    if kind is TypeKind.TEXT:
        if codec == "utf-8":
            return _same  # already UTF-8 (undecodable bytes would round-trip to themselves anyway)
        return lambda value: value.decode(codec, "surrogateescape").encode("utf-8", "surrogateescape")
    size = _INT_SIZES.get(kind)
    if size is not None:
        if binary:
            return lambda value: str(int.from_bytes(value, "big", signed=True)).encode() if len(value) == size else None
        return lambda value: str(int(value)).encode()  # normalises, and refuses what is not an integer
    if kind is TypeKind.UUID:
        return _uuid_binary_canon if binary else _uuid_text_canon
    if kind is TypeKind.BYTEA:
        return _same if binary else _bytea_text_canon
    return None


def _same(value: bytes) -> bytes | None:
    return value


def _uuid_hex(raw: bytes) -> bytes:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}".encode()


def _uuid_binary_canon(value: bytes) -> bytes | None:
    return _uuid_hex(value) if len(value) == 16 else None


def _uuid_text_canon(value: bytes) -> bytes | None:
    if len(value) == 36 and value[8:9] == value[13:14] == value[18:19] == value[23:24] == b"-":
        return value.lower()  # the form PostgreSQL writes: already canonical but for case
    # Anything else must still parse as 16 hex bytes.
    text = value.decode("ascii").replace("-", "").strip("{}")
    return _uuid_hex(bytes.fromhex(text)) if len(text) == 32 else None


def _bytea_text_canon(value: bytes) -> bytes | None:
    if not value.startswith(b"\\x"):
        return None  # the escape output format (bytea_output = escape) is not read
    return bytes.fromhex(value[2:].decode("ascii"))


def _hash_output(kind: TypeKind, binary: bool, shape: _Shape, codec: str) -> _Out | None:
    """A valid value of the column's type made from the 32 digest bytes."""
    if kind is TypeKind.TEXT:
        width = 64
        if shape.limit is not None:
            width = min(width, shape.limit)
        if shape.limit_bytes is not None:
            width = min(width, shape.limit_bytes)
        padding = b" " * (shape.limit - width) if shape.pad and shape.limit is not None else b""
        return lambda digest: digest.hex().encode()[:width] + padding
    size = _INT_SIZES.get(kind)
    if size is not None:
        if binary:
            return lambda digest: digest[:size]  # big-endian two's complement already
        return lambda digest: str(int.from_bytes(digest[:size], "big", signed=True)).encode()
    if kind is TypeKind.UUID:
        return _uuid_binary_out if binary else _uuid_text_out
    if kind is TypeKind.BYTEA:
        return _same_digest if binary else _bytea_text_out
    return None


def _uuid_binary_out(digest: bytes) -> bytes:
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(raw)


def _uuid_text_out(digest: bytes) -> bytes:
    return _uuid_hex(_uuid_binary_out(digest))


def _same_digest(digest: bytes) -> bytes:
    return digest


def _bytea_text_out(digest: bytes) -> bytes:
    return b"\\x" + digest.hex().encode()
