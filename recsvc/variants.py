"""A/B variants: several bundles, or several rankers of one bundle, served side by side.

``recsvc serve --variants FILE`` names them in a JSON file::

    {
      "salt": "2026-12-second-stage",
      "variants": {
        "control": {"bundle": ".local/bundles/taobao", "weight": 50},
        "first_stage": {"bundle": ".local/bundles/taobao", "weight": 50, "second_stage": 0}
      }
    }

``model`` and ``second_stage`` default to the server's settings. A request names its
variant, or gets one from a stable hash of its user id and the salt: a user keeps their
variant across requests, servers and restarts, and a new salt deals the users again. An
empty user id is hashed like any other, so anonymous requests all get one variant.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsvc.contract import MODELS
from recsvc.exceptions import ConfigError

#: The variant of a server without ``--variants``.
DEFAULT = "default"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FIELDS = {"bundle", "weight", "model", "second_stage"}


@dataclass(frozen=True)
class Variant:
    """One variant: what it serves and its share of the users (``weight`` over the sum)."""

    name: str
    bundle: Path
    weight: float
    model: str
    second_stage: bool


def load_variants(path: Path, model: str, second_stage: bool) -> tuple[list[Variant], str]:
    """The variants of a ``--variants`` file and its salt.

    Raises
    ------
    ConfigError
        An unreadable file, bad JSON, or a variant without a bundle, with an unknown field,
        a bad name, a weight that is not a positive number, or an unknown model.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--variants {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise ConfigError(f'--variants {path}: expected {{"variants": {{"<name>": {{...}}}}}}')
    salt = data.get("salt", "recsvc")
    if not isinstance(salt, str):
        raise ConfigError(f"--variants {path}: salt must be a string")
    entries: dict[str, Any] = data["variants"]
    if not entries:
        raise ConfigError(f"--variants {path}: no variants")
    variants = [_variant(path, name, entry, model, second_stage) for name, entry in entries.items()]
    return variants, salt


def _variant(path: Path, name: str, entry: Any, model: str, second_stage: bool) -> Variant:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"--variants {path}: variant {name!r}: {message}")

    if not NAME.fullmatch(name):
        raise fail("names are 1-64 of A-Z a-z 0-9 _ . -")
    if not isinstance(entry, dict):
        raise fail("expected an object")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    if not isinstance(entry.get("bundle"), str) or not entry["bundle"]:
        raise fail("needs a bundle path")
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < 1e9:
        raise fail(f"weight must be a positive number, got {weight!r}")
    chosen_model = entry.get("model", model)
    if chosen_model not in MODELS:
        raise fail(f"model {chosen_model!r} is not one of {', '.join(MODELS)}")
    stage = entry.get("second_stage", int(second_stage))
    if stage not in (0, 1):
        raise fail(f"second_stage must be 0 or 1, got {stage!r}")
    return Variant(name, Path(entry["bundle"]), float(weight), chosen_model, bool(stage))


class VariantPicker:
    """Deals users to variants by weight, stably: a hash of salt and user id, in [0, 1),
    against the variants' cumulative shares (in the file's order)."""

    def __init__(self, variants: list[Variant], salt: str) -> None:
        if not variants:
            raise ConfigError("no variants to pick from")
        self.names = [v.name for v in variants]
        total = sum(v.weight for v in variants)
        bounds, running = [], 0.0
        for variant in variants[:-1]:
            running += variant.weight / total
            bounds.append(running)
        self._bounds = bounds
        self._salt = salt.encode() + b"\0"

    def pick(self, user_id: str) -> str:
        """The user's variant."""
        if not self._bounds:
            return self.names[0]
        digest = hashlib.blake2b(self._salt + user_id.encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2.0**64
        return self.names[bisect_right(self._bounds, point)]
