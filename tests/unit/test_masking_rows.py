"""DataRow rewriting (``pgproxy.masking.rows``): masked rows equal the DataRow the wire codec would encode
for the masked values, NULLs stay NULL without reaching a masker, and every malformed row is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgproxy.masking.rows import MaskingError, mask_data_row
from pgproxy.masking.values import Masker
from pgproxy.wire.backend_results import DataRow, decode_data_row

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reverse(value: bytes) -> bytes | None:
    return value[::-1] + b"!"


def to_null(_value: bytes) -> bytes | None:
    return None


def to_empty(_value: bytes) -> bytes | None:
    return b""


MASKERS: dict[str, Masker | None] = {"none": None, "reverse": reverse, "null": to_null, "empty": to_empty}

values = st.lists(st.none() | st.binary(max_size=20), max_size=8)


def body_of(row: tuple[bytes | None, ...]) -> bytes:
    return DataRow(row).encode()[5:]


@SETTINGS
@given(data=st.data(), row=values, as_view=st.booleans())
def test_masked_row_is_the_encoding_of_the_masked_values(
    data: st.DataObject, row: list[bytes | None], as_view: bool
) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(MASKERS)), min_size=len(row), max_size=len(row)))
    maskers = [MASKERS[name] for name in names]
    body = body_of(tuple(row))
    masked = mask_data_row(memoryview(body) if as_view else body, maskers)
    expected = tuple(
        value if value is None or masker is None else masker(value) for value, masker in zip(row, maskers, strict=True)
    )
    assert masked == DataRow(expected).encode()
    assert decode_data_row(masked[5:]) == DataRow(expected)


def test_unmasked_row_is_copied_unchanged() -> None:
    body = body_of((b"a", None, b"", b"xyz"))
    assert mask_data_row(body, [None] * 4) == b"D" + struct.pack("!i", len(body) + 4) + body


def test_nulls_never_reach_a_masker() -> None:
    seen: list[bytes] = []

    def record(value: bytes) -> bytes | None:
        seen.append(value)
        return b"m"

    masked = mask_data_row(body_of((None, b"v", None)), [record, record, record])
    assert seen == [b"v"]
    assert decode_data_row(masked[5:]) == DataRow((None, b"m", None))


@SETTINGS
@given(row=values.filter(lambda row: any(value is not None for value in row)))
def test_every_truncation_is_refused(row: list[bytes | None]) -> None:
    body = body_of(tuple(row))
    maskers: list[Masker | None] = [reverse] * len(row)
    for cut in range(len(body)):
        with pytest.raises(MaskingError):
            mask_data_row(body[:cut], maskers)


@SETTINGS
@given(row=values, extra=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(row: list[bytes | None], extra: bytes) -> None:
    with pytest.raises(MaskingError, match="after its last column"):
        mask_data_row(body_of(tuple(row)) + extra, [None] * len(row))


@SETTINGS
@given(row=values, delta=st.sampled_from([-1, 1, 5]))
def test_a_column_count_mismatch_is_refused(row: list[bytes | None], delta: int) -> None:
    count = len(row) + delta
    if count < 0:
        count = 1
    with pytest.raises(MaskingError, match="columns"):
        mask_data_row(body_of(tuple(row)), [None] * count)


@pytest.mark.parametrize("length", [-2, -(2**31)])
def test_a_negative_length_other_than_null_is_refused(length: int) -> None:
    body = struct.pack("!hi", 1, length)
    with pytest.raises(MaskingError, match="negative"):
        mask_data_row(body, [None])
    with pytest.raises(MaskingError, match="negative"):
        mask_data_row(body, [reverse])


def test_an_overlong_value_length_is_refused() -> None:
    body = struct.pack("!hi", 1, 10) + b"short"
    with pytest.raises(MaskingError, match="truncated"):
        mask_data_row(body, [None])


def test_a_masker_that_raises_is_a_masking_error() -> None:
    def broken(_value: bytes) -> bytes | None:
        raise RuntimeError("boom")

    with pytest.raises(MaskingError, match="boom"):
        mask_data_row(body_of((b"secret",)), [broken])


def test_an_empty_row() -> None:
    assert mask_data_row(b"\x00\x00", []) == b"D\x00\x00\x00\x06\x00\x00"
    with pytest.raises(MaskingError):
        mask_data_row(b"", [])
