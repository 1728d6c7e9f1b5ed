"""Value maskers (``pgproxy.masking.values``): type classification, each strategy over whole classes of
values, hash equality across the text and binary formats, type validity of every output, fail-closed."""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pgproxy.masking.rules import ColumnRule
from pgproxy.masking.snapshot import TypeInfo
from pgproxy.masking.values import (
    BPCHAR_OID,
    NAME_OID,
    TEXT_OID,
    VARCHAR_OID,
    Masker,
    TypeKind,
    ascii_safe,
    type_kind,
    value_masker,
)
from pgproxy.policy.model import MaskStrategy

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"test-key"
INT_RANGES = {TypeKind.INT2: (2, "!h"), TypeKind.INT4: (4, "!i"), TypeKind.INT8: (8, "!q")}

texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
latin1_texts = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\x00"), max_size=40)
keeps = st.integers(0, 6)
all_kinds = st.sampled_from(list(TypeKind))
strategies_ = st.sampled_from(list(MaskStrategy))


def rule(strategy: MaskStrategy, **kwargs: object) -> ColumnRule:
    return ColumnRule(strategy, "public.t.c", **kwargs)  # type: ignore[arg-type]


def masker(
    strategy: MaskStrategy,
    kind: TypeKind = TypeKind.TEXT,
    *,
    binary: bool = False,
    typmod: int = -1,
    codec: str = "utf-8",
    key: bytes = KEY,
    type_oid: int = 0,
    **kwargs: object,
) -> Masker:
    return value_masker(
        rule(strategy, **kwargs), kind, binary=binary, typmod=typmod, codec=codec, key=key, type_oid=type_oid
    )


# --- type_kind -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "kind"),
    [
        (25, TypeKind.TEXT),
        (1043, TypeKind.TEXT),
        (1042, TypeKind.TEXT),
        (19, TypeKind.TEXT),
        (21, TypeKind.INT2),
        (23, TypeKind.INT4),
        (20, TypeKind.INT8),
        (2950, TypeKind.UUID),
        (17, TypeKind.BYTEA),
        (1700, TypeKind.OTHER),  # numeric
        (16, TypeKind.OTHER),  # bool
        (999_999, TypeKind.OTHER),  # unknown to the catalog
    ],
)
def test_builtin_type_kinds(oid: int, kind: TypeKind) -> None:
    assert type_kind(oid, MappingProxyType({})) is kind


def test_catalog_types_string_category_and_domains() -> None:
    types = {
        50_000: TypeInfo(50_000, "citext", "S", 50_000),
        50_001: TypeInfo(50_001, "email_d", "S", 50_000),  # domain over citext
        50_002: TypeInfo(50_002, "posint", "N", 23),  # domain over int4
        50_003: TypeInfo(50_003, "posint2", "N", 50_002),  # domain over that domain
        50_004: TypeInfo(50_004, "id_d", "U", 2950),  # domain over uuid
        50_005: TypeInfo(50_005, "geometry", "U", 50_005),  # a base type of its own
        50_006: TypeInfo(50_006, "loop_a", "U", 50_007),  # a corrupt cycle must end
        50_007: TypeInfo(50_007, "loop_b", "U", 50_006),
        50_008: TypeInfo(50_008, "money_d", "N", 790),  # domain over a builtin pgproxy does not hash
    }
    expected = {
        50_000: TypeKind.TEXT,
        50_001: TypeKind.TEXT,
        50_002: TypeKind.INT4,
        50_003: TypeKind.INT4,
        50_004: TypeKind.UUID,
        50_005: TypeKind.OTHER,
        50_006: TypeKind.OTHER,
        50_008: TypeKind.OTHER,
    }
    assert {oid: type_kind(oid, types) for oid in expected} == expected


# --- null and redact -------------------------------------------------------------------------------------


@SETTINGS
@given(kind=all_kinds, binary=st.booleans(), value=st.binary(max_size=40))
def test_null_is_always_null(kind: TypeKind, binary: bool, value: bytes) -> None:
    assert masker(MaskStrategy.NULL, kind, binary=binary)(value) is None


@SETTINGS
@given(kind=all_kinds, binary=st.booleans(), value=st.binary(max_size=40), text=texts)
def test_redact_gives_the_text_for_text_types_and_null_otherwise(
    kind: TypeKind, binary: bool, value: bytes, text: str
) -> None:
    masked = masker(MaskStrategy.REDACT, kind, binary=binary, text=text)(value)
    assert masked == (text.encode() if kind is TypeKind.TEXT else None)


def test_redact_respects_length_limits() -> None:
    assert masker(MaskStrategy.REDACT, typmod=4 + 3, type_oid=VARCHAR_OID)(b"secret") == b"***"
    assert masker(MaskStrategy.REDACT, typmod=4 + 2, type_oid=VARCHAR_OID)(b"se") is None
    assert masker(MaskStrategy.REDACT, typmod=4 + 6, type_oid=BPCHAR_OID)(b"secret") == b"***   "
    assert masker(MaskStrategy.REDACT, typmod=4 + 2, type_oid=VARCHAR_OID, text="x   ")(b"se") == b"x "
    assert masker(MaskStrategy.REDACT, type_oid=NAME_OID, text="é" * 32)(b"n") is None  # 64 bytes
    assert masker(MaskStrategy.REDACT, type_oid=NAME_OID, text="x" * 63)(b"n") == b"x" * 63


def test_redact_text_the_client_encoding_cannot_write_is_null() -> None:
    assert masker(MaskStrategy.REDACT, codec="latin-1", text="€")(b"secret") is None
    assert masker(MaskStrategy.REDACT, codec="cp1252", text="€")(b"secret") == b"\x80"


def test_unusable_codecs_give_null() -> None:
    assert masker(MaskStrategy.REDACT, codec="no-such-codec")(b"secret") is None
    assert masker(MaskStrategy.HASH, codec="utf-16")(b"secret") is None


# --- partial ---------------------------------------------------------------------------------------------


def check_partial(original: str, masked: str, first: int, last: int) -> None:
    assert len(masked) == len(original)
    if len(original) <= first + last:
        assert masked == "*" * len(original)
        return
    hidden = range(first, len(original) - last)
    assert all(masked[i] == "*" for i in hidden)
    assert masked[:first] == original[:first]
    assert masked[len(original) - last :] == original[len(original) - last :]


@SETTINGS
@given(value=texts, first=keeps, last=keeps, binary=st.booleans())
def test_partial_hides_every_character_but_the_kept_ones(value: str, first: int, last: int, binary: bool) -> None:
    masked = masker(MaskStrategy.PARTIAL, binary=binary, keep_first=first, keep_last=last)(value.encode())
    assert masked is not None
    check_partial(value, masked.decode(), first, last)


@SETTINGS
@given(value=latin1_texts, first=keeps, last=keeps)
def test_partial_counts_characters_of_the_client_encoding(value: str, first: int, last: int) -> None:
    masked = masker(MaskStrategy.PARTIAL, codec="latin-1", keep_first=first, keep_last=last)(value.encode("latin-1"))
    assert masked is not None
    check_partial(value, masked.decode("latin-1"), first, last)


@SETTINGS
@given(raw=st.binary(min_size=1, max_size=30))
def test_partial_masks_bytes_the_codec_cannot_decode(raw: bytes) -> None:
    masked = masker(MaskStrategy.PARTIAL, keep_first=0, keep_last=0)(raw)
    assert masked is not None
    assert set(masked) == {ord("*")}


def test_partial_on_non_text_types_is_null() -> None:
    for kind in set(TypeKind) - {TypeKind.TEXT}:
        assert masker(MaskStrategy.PARTIAL, kind)(b"12345678") is None


# --- email -----------------------------------------------------------------------------------------------


@SETTINGS
@given(value=texts | st.builds("{}@{}".format, texts, texts), binary=st.booleans())
def test_email_keeps_only_what_follows_the_last_at(value: str, binary: bool) -> None:
    masked = masker(MaskStrategy.EMAIL, binary=binary)(value.encode())
    expected = "***@" + value.rsplit("@", 1)[1] if "@" in value else "***"
    assert masked == expected.encode()


@SETTINGS
@given(local=texts, domain=texts, n=st.integers(1, 30), padded=st.booleans())
def test_email_in_limited_columns_fits_or_is_null(local: str, domain: str, n: int, padded: bool) -> None:
    domain = domain.replace("@", "")
    value = f"{local}@{domain}"
    assume(len(value) <= n)
    if padded:
        value = value.ljust(n)
    oid = BPCHAR_OID if padded else VARCHAR_OID
    masked = masker(MaskStrategy.EMAIL, typmod=n + 4, type_oid=oid)(value.encode())
    if masked is None:
        assert len("***@" + domain.rstrip(" ")) > n
        return
    text = masked.decode()
    assert len(text) == n if padded else len(text) <= n
    assert text.rstrip(" ") == ("***@" + domain).rstrip(" ")


def test_email_on_non_text_types_is_null() -> None:
    assert masker(MaskStrategy.EMAIL, TypeKind.BYTEA)(b"a@b") is None


# --- hash ------------------------------------------------------------------------------------------------


def hmac_hex(data: bytes, key: bytes = KEY) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


@SETTINGS
@given(value=texts, binary=st.booleans())
def test_text_hash_is_the_keyed_hmac_of_the_utf8_text(value: str, binary: bool) -> None:
    masked = masker(MaskStrategy.HASH, binary=binary)(value.encode())
    assert masked == hmac_hex(value.encode()).encode()


@SETTINGS
@given(value=latin1_texts)
def test_text_hash_does_not_depend_on_the_client_encoding(value: str) -> None:
    utf8 = masker(MaskStrategy.HASH)(value.encode())
    latin1 = masker(MaskStrategy.HASH, codec="latin-1")(value.encode("latin-1"))
    assert utf8 == latin1


@SETTINGS
@given(kind=st.sampled_from(list(INT_RANGES)), data=st.data())
def test_int_hash_is_equal_in_both_formats_and_a_valid_int(kind: TypeKind, data: st.DataObject) -> None:
    size, fmt = INT_RANGES[kind]
    bound = 2 ** (8 * size - 1)
    value = data.draw(st.integers(-bound, bound - 1))
    text_out = masker(MaskStrategy.HASH, kind)(str(value).encode())
    binary_out = masker(MaskStrategy.HASH, kind, binary=True)(struct.pack(fmt, value))
    assert text_out is not None
    assert binary_out is not None
    assert len(binary_out) == size
    (from_binary,) = struct.unpack(fmt, binary_out)
    assert int(text_out) == from_binary
    assert -bound <= from_binary < bound
    digest = hmac.new(KEY, str(value).encode(), hashlib.sha256).digest()
    assert binary_out == digest[:size]
    # the same decimal text in a text column hashes alike: joins across types keep working
    assert masker(MaskStrategy.HASH)(str(value).encode()) == hmac_hex(str(value).encode()).encode()


@SETTINGS
@given(value=st.uuids())
def test_uuid_hash_is_equal_in_both_formats_and_a_version4_uuid(value: uuid.UUID) -> None:
    text_out = masker(MaskStrategy.HASH, TypeKind.UUID)(str(value).encode())
    upper_out = masker(MaskStrategy.HASH, TypeKind.UUID)(str(value).upper().encode())
    binary_out = masker(MaskStrategy.HASH, TypeKind.UUID, binary=True)(value.bytes)
    assert text_out is not None
    assert binary_out is not None
    parsed = uuid.UUID(text_out.decode())
    assert str(parsed) == text_out.decode()  # canonical lowercase form
    assert parsed.bytes == binary_out
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122
    assert upper_out == text_out
    assert parsed != value


@SETTINGS
@given(value=st.binary(max_size=40))
def test_bytea_hash_is_equal_in_both_formats(value: bytes) -> None:
    text_out = masker(MaskStrategy.HASH, TypeKind.BYTEA)(b"\\x" + value.hex().encode())
    binary_out = masker(MaskStrategy.HASH, TypeKind.BYTEA, binary=True)(value)
    digest = hmac.new(KEY, value, hashlib.sha256).digest()
    assert binary_out == digest
    assert text_out == b"\\x" + digest.hex().encode()


@SETTINGS
@given(value=texts, n=st.integers(1, 100), padded=st.booleans(), binary=st.booleans())
def test_text_hash_fits_varchar_and_bpchar(value: str, n: int, padded: bool, binary: bool) -> None:
    oid = BPCHAR_OID if padded else VARCHAR_OID
    masked = masker(MaskStrategy.HASH, typmod=n + 4, type_oid=oid, binary=binary)(value.encode())
    assert masked is not None
    full = hmac_hex(value.encode())
    expected = full[:n].ljust(n) if padded else full[:n]
    assert masked.decode() == expected


def test_name_hash_fits_63_bytes() -> None:
    masked = masker(MaskStrategy.HASH, type_oid=NAME_OID)(b"relname")
    assert masked == hmac_hex(b"relname")[:63].encode()
    assert masker(MaskStrategy.HASH, type_oid=TEXT_OID)(b"relname") == hmac_hex(b"relname").encode()


@pytest.mark.parametrize("key", [b"", b"k" * 64, b"long key " * 20])
def test_hash_matches_the_standard_hmac_for_any_key_length(key: bytes) -> None:
    assert masker(MaskStrategy.HASH, key=key)(b"value") == hmac_hex(b"value", key).encode()


def test_hash_depends_on_the_key() -> None:
    one = masker(MaskStrategy.HASH, key=b"one")(b"value")
    two = masker(MaskStrategy.HASH, key=b"two")(b"value")
    assert one != two


@pytest.mark.parametrize(
    ("kind", "binary", "value"),
    [
        (TypeKind.INT4, True, b"\x00\x01"),  # wrong width
        (TypeKind.INT2, True, b"\x00\x01\x02\x03"),
        (TypeKind.INT8, False, b"12a"),
        (TypeKind.UUID, False, b"not-a-uuid"),
        (TypeKind.UUID, True, b"\x00" * 15),
        (TypeKind.BYTEA, False, b"\\001abc"),  # escape output format
        (TypeKind.BYTEA, False, b"\\xzz"),
        (TypeKind.OTHER, False, b"3.14"),
        (TypeKind.OTHER, True, b"\x00"),
    ],
)
def test_hash_of_an_unreadable_value_is_null(kind: TypeKind, binary: bool, value: bytes) -> None:
    assert masker(MaskStrategy.HASH, kind, binary=binary)(value) is None


@SETTINGS
@given(
    strategy=strategies_,
    kind=all_kinds,
    binary=st.booleans(),
    typmod=st.sampled_from([-1, 4, 5, 12, 70]),
    codec=st.sampled_from(["utf-8", "latin-1", "euc-jp", "cp1251", "shift_jis"]),
    value=st.binary(max_size=40),
)
def test_no_masker_raises_on_any_bytes(
    *, strategy: MaskStrategy, kind: TypeKind, binary: bool, typmod: int, codec: str, value: bytes
) -> None:
    masked = masker(strategy, kind, binary=binary, typmod=typmod, codec=codec, type_oid=BPCHAR_OID)(value)
    assert masked is None or isinstance(masked, bytes)


def test_ascii_safe_encodings() -> None:
    assert all(ascii_safe(codec) for codec in ("utf-8", "iso8859-1", "cp1252", "euc-jp", "koi8-r"))
    assert not any(ascii_safe(codec) for codec in ("shift_jis", "big5", "gbk", "utf-16"))


def test_ascii_embedding_encodings_are_still_masked_by_character() -> None:
    value = "ソース@例".encode("shift_jis")  # "ソ" is 0x83 0x5c: an ASCII backslash byte inside
    partial = masker(MaskStrategy.PARTIAL, codec="shift_jis", keep_first=1, keep_last=1)(value)
    assert partial is not None
    assert partial.decode("shift_jis") == "ソ***例"
    spaced = "x@y\u3000z".encode("shift_jis")  # the ideographic space is 0x81 0x40: an "@" byte inside
    assert masker(MaskStrategy.EMAIL, codec="shift_jis")(spaced) == "***@y\u3000z".encode("shift_jis")
