"""What a loader kept and what it skipped: the one report every input loader returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: Skipped entries kept verbatim as examples; the rest are only counted.
MAX_EXAMPLES = 20


@dataclass
class SkipReport:
    """Counts of one load: entries read, loaded, and skipped by reason.

    Attributes
    ----------
    source : str
        The file or folder read.
    read : int
        Rows or files looked at.
    loaded : int
        Entries that were kept.
    skipped : Counter[str]
        Skipped entries per reason.
    examples : list of str
        The first ``MAX_EXAMPLES`` skipped entries, as ``"<where>: <reason> (<detail>)"``.
    """

    source: str
    read: int = 0
    loaded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        """Count one skipped entry (``where``: a line number, a file name, ...)."""
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """E.g. ``"log.csv: 84476 read, 84475 loaded, 1 skipped (too few fields: 1); first:
        line 84476: too few fields"``."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        text = f"{self.source}: {self.read} read, {self.loaded} loaded, {self.n_skipped} skipped"
        if reasons:
            text += f" ({reasons}); first: {'; '.join(self.examples[:3])}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "read": self.read,
            "loaded": self.loaded,
            "skipped": dict(sorted(self.skipped.items())),
            "examples": self.examples,
        }
