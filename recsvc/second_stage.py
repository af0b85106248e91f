"""The learned second stage: a LightGBM ranking model over per-candidate features.

The bundle carries the model as LightGBM's own text format, stored as the bytes of
``ranker/model`` (checksummed with every other array; no pickle). The server and
``recsvc eval`` score a request's candidates with :meth:`SecondStage.scores` on the
features of :mod:`recsvc.features`; a model trained on other features is refused.
LightGBM is imported only when a bundle has a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsvc.bundle import Bundle
from recsvc.exceptions import BundleError

MODEL_ARRAY = "ranker/model"


def model_array(text: str) -> np.ndarray:
    """The model's text as the uint8 array the bundle stores."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


#: Lines every complete LightGBM text model has; LightGBM's own parser aborts the process
#: (not an exception) on some truncated models, so a model without them never reaches it.
_MODEL_MARKS = ("tree\n", "\nfeature_names=", "\nend of trees\n", "\nend of parameters\n")


def _check_complete(text: str) -> None:
    if not text.startswith(_MODEL_MARKS[0]):
        raise ValueError("it does not start with LightGBM's 'tree' header")
    missing = [mark.strip() for mark in _MODEL_MARKS[1:] if mark not in text]
    if missing:
        raise ValueError(f"it is incomplete (no {', '.join(missing)})")


class SecondStage:
    """A loaded ranking model; ``scores`` is safe to call from any thread."""

    def __init__(self, booster: Any, features: tuple[str, ...]) -> None:
        self._booster = booster
        self.features = features

    @classmethod
    def from_bundle(cls, bundle: Bundle, features: tuple[str, ...]) -> SecondStage | None:
        """The bundle's model, or None when it has none.

        Raises
        ------
        BundleError
            The model does not parse, or was trained on other features than ``features``.
        """
        if MODEL_ARRAY not in bundle:
            return None
        import lightgbm  # only servers whose bundle has a model pay for importing it

        raw = np.asarray(bundle[MODEL_ARRAY])
        try:
            text = raw.tobytes().decode("utf-8")
            _check_complete(text)
            booster = lightgbm.Booster(model_str=text)
        except (UnicodeDecodeError, ValueError, lightgbm.basic.LightGBMError) as exc:
            msg = f"bundle {bundle.version}: {MODEL_ARRAY} is not a LightGBM model: {exc}"
            raise BundleError(msg) from None
        trained_on = tuple(booster.feature_name())
        if trained_on != features:
            raise BundleError(
                f"bundle {bundle.version}: the ranker was trained on the features "
                f"{list(trained_on)}, this server builds {list(features)}"
            )
        return cls(booster, features)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Float64 scores of candidates (rows of ``features``; higher is better)."""
        out: np.ndarray = self._booster.predict(features, num_threads=1)
        return out
