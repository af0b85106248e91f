"""Arrow columns into numpy: dictionary-encoded ids as int32 codes into one vocabulary, and
timestamps parsed as Python's ``float()`` parses them, without a Python object per row."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: What ``str.strip()`` removes: every code point for which ``str.isspace()`` is true.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: Timestamps that pyarrow's cast reads exactly as ``float()`` does.
PLAIN_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


class DictionaryColumn:
    """A dictionary-encoded column read batch by batch: per-batch codes and dictionaries."""

    def __init__(self) -> None:
        self.dictionaries: list[pa.Array] = []
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, column: pa.Array) -> None:
        if isinstance(column, pa.DictionaryArray):
            indices, dictionary = column.indices.to_numpy(), column.dictionary
        else:
            indices, dictionary = np.arange(len(column), dtype=np.int32), column
        self.parts.append(np.add(indices, self.size, dtype=np.int32))
        self.dictionaries.append(dictionary.cast(pa.large_string()))
        self.size += len(dictionary)

    def finish(self, extra: list[str]) -> tuple[np.ndarray, pa.Array]:
        """The code of every row, then of each of ``extra``, into one vocabulary of the
        stripped values (unsorted, perhaps with entries of skipped rows), and that vocabulary."""
        self.add(pa.array(extra, pa.large_string()))
        encoded = pc.utf8_trim(pa.concat_arrays(self.dictionaries), WHITESPACE).dictionary_encode()
        self.dictionaries.clear()
        lookup = encoded.indices.to_numpy()
        codes = np.empty(sum(len(part) for part in self.parts), dtype=np.int32)
        start = 0
        while self.parts:  # part by part: each looks up its own slice, in cache
            part = self.parts.pop(0)
            np.take(lookup, part, out=codes[start : start + len(part)], mode="clip")
            start += len(part)
        return codes, encoded.dictionary


def parse_timestamps(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``float()`` of each string (NaN where it fails) and where it failed.

    pyarrow's cast reads plain numbers; what it refuses or makes non-finite (``" 12 "``,
    ``"1_000"``, ``"inf"``, ``"nan(1)"``, ...) goes through ``float()`` itself.
    """
    try:
        stamps = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False, writable=True)
        slow = np.flatnonzero(~np.isfinite(stamps))
    except pa.ArrowInvalid:
        plain = pc.match_substring_regex(column, PLAIN_NUMBER)
        stamps = np.full(len(column), np.nan)
        mask = plain.to_numpy(zero_copy_only=False)
        try:
            stamps[mask] = pc.cast(column.filter(plain), pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            mask[:] = False
        slow = np.flatnonzero(~mask | ~np.isfinite(stamps))
    unparsable = np.zeros(len(column), dtype=bool)
    for row, text in zip(slow, column.take(slow).to_pylist(), strict=True):
        try:
            stamps[row] = float(text)
        except ValueError:
            stamps[row], unparsable[row] = math.nan, True
    return stamps, unparsable


def concatenated(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """One array of ``parts``, each part freed once copied."""
    out = np.empty(sum(len(part) for part in parts), dtype=dtype)
    start = 0
    while parts:
        part = parts.pop(0)
        out[start : start + len(part)] = part
        start += len(part)
    return out


def position_of(vocab: pa.Array, value: str) -> int:
    """Position of ``value`` in ``vocab``, -1 when absent."""
    return int(pc.index(vocab, value).as_py())


def sorted_vocabulary(codes: np.ndarray, vocab: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` renumbered into the sorted str array of the vocabulary entries they use."""
    used = np.zeros(len(vocab), dtype=bool)
    used[codes] = True
    present = np.flatnonzero(used)
    names, rank = np.unique(
        np.array(vocab.take(present).to_pylist(), dtype=str), return_inverse=True
    )
    renumber = np.zeros(len(vocab), dtype=np.int32)
    renumber[present] = rank
    return renumber[codes], names
