"""clip: request values quoted in error messages and logs, at a bounded length."""

from __future__ import annotations

import ast

import pytest

from recsvc.redact import clip


def test_short_values_are_their_repr() -> None:
    assert clip("abcd") == "'abcd'"
    assert clip("") == "''"
    assert clip("it's") == '"it\'s"'
    assert clip("x" * 64) == repr("x" * 64)


def test_long_values_keep_a_prefix_and_say_how_long_they_were() -> None:
    assert clip("abcd" * 2**18) == f"{'abcd' * 16 + '…'!r} (1048576 characters)"
    assert clip("abcdefgh", limit=4) == "'abcd…' (8 characters)"


@pytest.mark.parametrize(
    "value",
    ["\x00" * 100, "\U000e0001" * 1000, "\ud800" * 70, "\n" * 64, "é" * 10**6, "'\"" * 500],
)
def test_escaped_characters_count_against_the_limit(value: str) -> None:
    shown = clip(value)
    note = f" ({len(value)} characters)"
    assert shown.endswith(note) and len(shown) <= 64 + 3 + len(note)
    quoted = ast.literal_eval(shown.removesuffix(note))  # escaped as repr escapes
    assert quoted.endswith("…") and value.startswith(quoted[:-1]) and len(quoted) > 1
