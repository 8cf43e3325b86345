"""Plate normalization and OCR look-alike classes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citybrain.parking.plates import (
    LOOKALIKE_CLASSES,
    differs_only_by_lookalikes,
    lookalike_key,
    normalize,
)


@pytest.mark.parametrize(
    "raw",
    [
        "浙A12345",
        "浙A·12345",  # middle dot
        "浙A・12345",  # katakana middle dot
        "浙A-12345",
        "浙A 12345",
        " 浙 A 1 2 3 4 5 ",
        "浙a12345",  # lower case
        "浙Ａ１２３４５",  # full width
        "浙Ａ－１２３４５",  # full-width hyphen
        "浙Ａ　１２３４５",  # ideographic space
        "浙A\u200b12345",  # zero-width space
        "浙A–12345",  # en dash
        "浙A.12345",
    ],
)
def test_normalize_strips_separators_folds_width_and_case(raw: str) -> None:
    assert normalize(raw) == "浙A12345"


def test_normalize_keeps_the_province_and_new_energy_letters() -> None:
    assert normalize("浙A-1234D") == "浙A1234D"
    assert normalize("粤b·d12345") == "粤BD12345"
    assert normalize("京Ａ·Ｆ１２３４") == "京AF1234"


def test_normalize_of_only_separators_is_empty() -> None:
    assert normalize(" ·- ") == ""


@pytest.mark.parametrize("cls", LOOKALIKE_CLASSES)
def test_every_member_of_a_class_has_the_same_key(cls: str) -> None:
    keys = {lookalike_key(f"浙A123{ch}5") for ch in cls}
    assert len(keys) == 1


def test_lookalike_classes() -> None:
    assert differs_only_by_lookalikes("浙A12345", "浙A1Z34S")  # 2/Z, 5/S
    assert differs_only_by_lookalikes("浙A-1234D", "浙A12340")  # D/0
    assert differs_only_by_lookalikes("浙A0QDO8", "浙AOD0QB")  # 0/D/Q/O, 8/B
    assert differs_only_by_lookalikes("浙AI6G", "浙A1G6")  # 1/I, 6/G
    assert differs_only_by_lookalikes("浙a·1234d", "浙Ａ１２３４０")  # raw reads work too
    assert differs_only_by_lookalikes("浙A12345", "浙A12345")  # equal counts


def test_different_classes_do_not_mix() -> None:
    assert not differs_only_by_lookalikes("浙A12345", "浙A12346")  # 5 vs 6
    assert not differs_only_by_lookalikes("浙A1234D", "浙A1234S")  # 0-class vs 5-class
    assert not differs_only_by_lookalikes("浙A12345", "沪A12345")  # province is never folded
    assert not differs_only_by_lookalikes("浙A1234", "浙A12345")  # length matters
    assert not differs_only_by_lookalikes("浙A1234C", "浙A12340")  # C is in no class


plate_text = st.text(
    alphabet=st.sampled_from(list("浙沪京粤ABCDGIOQSZ0125689 -·ａｂＤ０１２－・")), max_size=10
)


@given(st.text())
def test_normalize_is_idempotent(raw: str) -> None:
    assert normalize(normalize(raw)) == normalize(raw)


@given(st.text())
def test_lookalike_key_is_idempotent_and_ignores_formatting(raw: str) -> None:
    key = lookalike_key(raw)
    assert lookalike_key(key) == key
    assert lookalike_key(normalize(raw)) == key


@given(plate_text, plate_text, plate_text)
def test_differs_only_by_lookalikes_is_an_equivalence(a: str, b: str, c: str) -> None:
    assert differs_only_by_lookalikes(a, a)
    assert differs_only_by_lookalikes(a, b) == differs_only_by_lookalikes(b, a)
    if differs_only_by_lookalikes(a, b) and differs_only_by_lookalikes(b, c):
        assert differs_only_by_lookalikes(a, c)


@given(plate_text, plate_text)
def test_lookalike_equality_is_per_character(a: str, b: str) -> None:
    na, nb = normalize(a), normalize(b)

    def same_class(x: str, y: str) -> bool:
        return x == y or any(x in cls and y in cls for cls in LOOKALIKE_CLASSES)

    expected = len(na) == len(nb) and all(same_class(x, y) for x, y in zip(na, nb, strict=True))
    assert differs_only_by_lookalikes(a, b) == expected
