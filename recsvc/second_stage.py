"""The learned second stage: a LightGBM ranking model over per-candidate features.

The bundle carries the model as LightGBM's own text format, stored as the bytes of
``ranker/model`` (checksummed with every other array; no pickle). The server and
``recsvc eval`` score a request's candidates with :meth:`SecondStage.scores` on the
features of :mod:`recsvc.features`, through :class:`recsvc.forest.Forest`: the trees walked
in C, with LightGBM's split rules, so serving needs no LightGBM (which is only for
training). A model that does not parse, or was trained on other features, is refused.

A model trained before the live columns were added at the end of the list reads its 22
columns as a prefix of today's rows: such a bundle keeps serving as it was built, without
the new features, until it is rebuilt. No other prefix is accepted.
"""

from __future__ import annotations

import numpy as np

from recsvc.bundle import Bundle
from recsvc.exceptions import BundleError
from recsvc.forest import Forest

MODEL_ARRAY = "ranker/model"
#: The columns of models trained before the live columns were added (issue 16): such a model
#: reads them as a prefix of today's rows.
LEGACY_FEATURES = 22


def model_array(text: str) -> np.ndarray:
    """The model's text as the uint8 array the bundle stores."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


class SecondStage:
    """A loaded ranking model; ``scores`` is safe to call from any thread."""

    def __init__(self, forest: Forest, features: tuple[str, ...]) -> None:
        if forest.feature_names not in (features, features[:LEGACY_FEATURES]):
            raise ValueError("the forest's features must be ``features`` or their older prefix")
        self._forest = forest
        self.features = features
        #: The model's columns: all of ``features``, or a prefix for an older model.
        self.n_columns = len(forest.feature_names)
        # The features some tree splits on, found once here, not per request.
        split_on = np.unique(forest.split_feature)
        self._used = frozenset(forest.feature_names[int(j)] for j in split_on if j >= 0)

    @classmethod
    def from_bundle(cls, bundle: Bundle, features: tuple[str, ...]) -> SecondStage | None:
        """The bundle's model, or None when it has none.

        Raises
        ------
        BundleError
            The model does not parse, or was trained on features other than ``features``
            or a prefix of them.
        """
        if MODEL_ARRAY not in bundle:
            return None
        raw = np.asarray(bundle[MODEL_ARRAY])
        try:
            forest = Forest.from_model_text(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            msg = f"bundle {bundle.version}: {MODEL_ARRAY} is not a LightGBM model: {exc}"
            raise BundleError(msg) from None
        names = forest.feature_names
        if names != features and names != features[:LEGACY_FEATURES]:
            raise BundleError(
                f"bundle {bundle.version}: the ranker was trained on the features "
                f"{list(forest.feature_names)}, this server builds {list(features)}"
            )
        return cls(forest, features)

    @property
    def n_trees(self) -> int:
        return self._forest.n_trees

    def uses(self, feature: str) -> bool:
        """Whether a tree splits on ``feature``: a model built before it, or trained with
        its column missing (``ranker.live=false``, ``ranker.without``), does not."""
        return feature in self._used

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Float64 scores of candidates (rows of float32 ``features``; higher is better)."""
        if self.n_columns < features.shape[1]:
            features = features[:, : self.n_columns]
        return self._forest.scores(features)
