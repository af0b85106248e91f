"""The PSS stage of the pipeline: compound features → mined, cleaned pairs → SiameseNet →
product embeddings, with the verification table of PSS Tables 1-3.

Parts of the compound feature: the behaviour embedding (item2vec), the image embedding when
the catalogue has one, the MiniLM title embedding when the caller passes a ``title`` part
(``--item-titles``, :mod:`offline.features.titles`), and otherwise a hashed embedding of the
item's category name when it has categories. Two tasks: view-to-purchase pairs mined from
the training log (a clicks-only log gets consecutive-view pairs instead, task
``view_to_view``), and, with categories, ``catalogue_labelled`` pairs (same category as
positives, other categories as negatives) standing in for the human labels these datasets
lack. Each task's pairs are split by anchor into training and held-out pairs; the held-out
ones measure the raw parts, the compound feature and the trained embedding.

The source proposes neighbours only for items that behaviour, an image or a title
describes, and only such items: an item known by its category alone is left to the pool
merge's category rule (``pss.category_only_neighbours=true`` lets it in).

With ``pss.loss=hrms`` the tower is trained with the HRMS loss over the levels of
``pss.hrms_levels``: ``pairs`` (items joined by the behavioural task's training positives,
as connected components) and ``category``, with one ``pss.hrms_alphas`` / ``_betas`` /
``_epsilons`` / ``_weights`` value per level.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offline.data.interactions import CLICK, Catalogue, Interactions
from offline.data.pairs import Pairs
from offline.features.compound import CompoundFeatures, Part, compound_features, part_mask
from offline.pss.metrics import verification_table
from offline.pss.pairs import (
    CATALOGUE_LABELLED,
    clean_pairs,
    mine_catalogue_labelled,
    mine_view_to_purchase,
    split_by_anchor,
)
from recsvc.exceptions import ConfigError, DataError
from training.configs import HRMS_PER_LEVEL, PSSConfig

logger = logging.getLogger(__name__)
#: Task name of the co-view pairs used when the log has too few add-to-carts and purchases.
VIEW_TO_VIEW = "view_to_view"
#: Fewest view-to-purchase positives worth training on.
MIN_POSITIVES = 100
#: HRMS hierarchy levels: "pairs" groups the items joined by the behavioural task's training
#: positives (connected components), "category" is the item's category.
HRMS_LEVELS = ("pairs", "category")
#: Name of the compound feature's part built from the category (:func:`category_part`).
CATEGORY_PART = "category"


@dataclass(frozen=True)
class PSSSettings(PSSConfig):
    """``--param pss.<name>=...`` settings of the PSS stage.

    The SiameseNet's hyper-parameters (``width``, ``depth``, ``loss``, ``margin``,
    ``epochs``, ``batch_size``, ``learning_rate``, ``hrms_*`` values) are the fields of
    :class:`training.configs.PSSConfig`, which this class extends and which
    :func:`build_pss` hands to :func:`training.pss.train_pss` as they are; the fields
    declared here are the stage's own: whether it runs, the compound feature, mining,
    cleaning, the held-out split, the HRMS hierarchy and who gets neighbours.
    """

    enabled: bool = False
    feature_size: int = 128
    n_back: int = 20
    positive_min: float = 0.6
    negative_max: float = 0.8
    labelled_anchors: int = 20000
    labelled_negatives: int = 5
    #: Weight of the ``catalogue_labelled`` task's loss (the behavioural task weighs 1).
    labelled_weight: float = 1.0
    holdout_fraction: float = 0.1
    min_negative_ratio: float = 1.0
    hrms_levels: str = "pairs,category"
    #: Let items whose compound feature is their category alone into the PSS source, as
    #: queries and as candidates. Off: such an item (new, no image or title) has no more to
    #: go on than the pool merge's category rule, and its PSS neighbours took that rule's
    #: place (docs/RESULTS.md); its PSS row is zero, and the ``pss`` eval method cannot
    #: score it.
    category_only_neighbours: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_size < 1:
            raise ConfigError(f"pss.feature_size must be >= 1: {self.feature_size}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"pss.holdout_fraction must be in (0, 1): {self.holdout_fraction}")
        levels = self.levels()
        unknown = sorted(set(levels) - set(HRMS_LEVELS))
        if not levels or unknown or len(set(levels)) != len(levels):
            raise ConfigError(
                f"pss.hrms_levels: {self.hrms_levels!r}; name distinct levels of {HRMS_LEVELS}"
            )

    def validate(self) -> None:
        """Check the settings that must agree with each other (one HRMS value per level).

        Not done on construction, so ``--param`` can change the levels and the values one
        at a time; :func:`build_pss` and the commands call it before any work.
        """
        for name in HRMS_PER_LEVEL:
            self.floats(name)

    def levels(self) -> list[str]:
        """The HRMS hierarchy levels, finest first."""
        return [name.strip() for name in self.hrms_levels.split(",") if name.strip()]

    def floats(self, name: str) -> tuple[float, ...]:
        """A comma-separated HRMS setting as floats, checked to hold one value per level."""
        values = self.hrms_values(name)
        if len(values) != len(self.levels()):
            raise ConfigError(
                f"pss.{name}: {getattr(self, name)!r} has {len(values)} values; pss.hrms_levels "
                f"{self.hrms_levels!r} needs one per level"
            )
        return values


@dataclass
class PSSResult:
    """What the stage produced, and the figures it measured.

    ``known`` marks the items the PSS source proposes neighbours for and from; the other
    rows of ``embeddings`` are zero (see ``PSSSettings.category_only_neighbours``).
    """

    embeddings: np.ndarray
    known: np.ndarray
    features: CompoundFeatures
    report: dict[str, Any] = field(default_factory=dict)


def category_part(catalogue: Catalogue, size: int, seed: int) -> Part:
    """A hashed-token embedding of each item's category name (no titles in the data)."""
    from offline.features.text import HashedTokenEmbedder

    names = np.asarray(catalogue.category_names).astype(str)
    embedder = HashedTokenEmbedder(dim=size, seed=seed)
    by_category = embedder.embed(list(names))
    cats = np.asarray(catalogue.item_category)
    known = cats >= 0
    vectors = np.zeros((len(cats), size), dtype=np.float32)
    vectors[known] = by_category[cats[known]]
    return Part(CATEGORY_PART, vectors, known)


def add_random_negatives(pairs: Pairs, candidates: np.ndarray, ratio: float, seed: int) -> Pairs:
    """Top up the negatives to ``ratio`` per positive with uniformly drawn candidates.

    Short sessions rarely have an item ``n_back`` views before the anchor, so the hard
    negatives of a behavioural task can be far fewer than its positives; a contrastive loss
    with almost no negatives has nothing to push apart.
    """
    rng = np.random.default_rng(seed)
    need = int(ratio * pairs.n_positive) - pairs.n_negative
    if need <= 0 or not len(candidates):
        return pairs
    anchors = rng.choice(pairs.left[pairs.label == 1], need)
    others = rng.choice(candidates, need)
    keep = others != anchors
    return Pairs(
        np.r_[pairs.left, anchors[keep]].astype(np.int32),
        np.r_[pairs.right, others[keep]].astype(np.int32),
        np.r_[pairs.label, np.zeros(int(keep.sum()), dtype=np.int8)],
        pairs.task,
    )


def positive_groups(pairs: Pairs, n_items: int) -> np.ndarray:
    """Group label of each item: the connected component of the pairs' positives.

    Returns
    -------
    int32 array, shape (n_items,); -1 for items in no positive pair.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    positive = pairs.label == 1
    left, right = pairs.left[positive], pairs.right[positive]
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n_items, n_items))
    _, labels = connected_components(graph, directed=False)
    in_pair = np.zeros(n_items, dtype=bool)
    in_pair[left], in_pair[right] = True, True
    return np.where(in_pair, labels, -1).astype(np.int32)


def hrms_hierarchy(levels: list[str], behaviour: Pairs, catalogue: Catalogue) -> np.ndarray:
    """int32 (n_items, len(levels)): each item's label per HRMS level (``HRMS_LEVELS``)."""
    n_items = catalogue.n_items
    columns = {
        "pairs": lambda: positive_groups(behaviour, n_items),
        "category": lambda: np.asarray(catalogue.item_category, dtype=np.int32),
    }
    return np.column_stack([columns[name]() for name in levels]).astype(np.int32)


def build_pss(
    fit: Interactions,
    catalogue: Catalogue,
    parts: list[Part],
    settings: PSSSettings,
    seed: int,
) -> PSSResult:
    """Run the stage (see the module docstring).

    Parameters
    ----------
    fit : Interactions
        The training events, sorted by (user, ts).
    catalogue : Catalogue
    parts : raw embeddings (behaviour, image, title; the category part is added here)
    settings : PSSSettings
    seed : int
    """
    from training.pss import train_pss

    settings.validate()
    category = category_part(catalogue, settings.feature_size, seed)
    if category.known.any() and not any(p.name == "title" for p in parts):
        parts = [*parts, category]
    features = compound_features(parts, settings.feature_size)
    raw = [p.vectors for p in parts]
    known = [p.known for p in parts]
    report: dict[str, Any] = {"parts": [name for name, _, _ in features.parts]}

    behaviour = mine_view_to_purchase(fit, n_back=settings.n_back)
    if behaviour.n_positive < MIN_POSITIVES:
        # A clicks-only log (YooChoose): consecutive views stand in for view-to-purchase.
        co_views = mine_view_to_purchase(fit, n_back=settings.n_back, conversion_types=(CLICK,))
        behaviour = dataclasses.replace(co_views, task=VIEW_TO_VIEW)
    if behaviour.n_negative < settings.min_negative_ratio * behaviour.n_positive:
        behaviour = add_random_negatives(
            behaviour, np.flatnonzero(features.known), settings.min_negative_ratio, seed
        )
    mined = {behaviour.task: behaviour}
    if category.known.any():
        labelled = mine_catalogue_labelled(
            catalogue.item_category,
            settings.labelled_anchors,
            negatives_per_positive=settings.labelled_negatives,
            eligible=features.known,
            seed=seed,
        )
        if labelled.n_positive:
            mined[CATALOGUE_LABELLED] = labelled
    report["tasks"] = list(mined)
    train: dict[str, Pairs] = {}
    held: dict[str, Pairs] = {}
    for task, pairs in mined.items():
        cleaned, cleaning = clean_pairs(
            pairs, raw, known, positive_min=settings.positive_min,
            negative_max=settings.negative_max,
        )  # fmt: skip
        print(cleaning.summary())
        report[f"cleaning/{task}"] = cleaning.summary()
        if cleaned.n_positive == 0:
            raise DataError(f"pss: no {task} positives left after cleaning")
        train[task], held[task] = split_by_anchor(cleaned, settings.holdout_fraction, seed=seed)

    hierarchy = hrms_hierarchy(settings.levels(), train[behaviour.task], catalogue)
    embeddings, losses = train_pss(
        features.matrix, train, settings, seed=seed, hierarchy=hierarchy,
        task_weights={CATALOGUE_LABELLED: settings.labelled_weight},
    )  # fmt: skip
    embeddings[~features.known] = 0.0
    neighbour_items = items_for_neighbours(parts, features.known, settings)
    if not neighbour_items.any():
        raise DataError(
            "pss: no item has behaviour, an image or a title, so PSS has nothing to add to "
            "the category rule (pss.category_only_neighbours=true uses the category alone)"
        )
    report["neighbour_items"] = int(neighbour_items.sum())
    report["category_only_items"] = int((features.known & ~neighbour_items).sum())
    report["losses"] = losses
    report["pairs"] = {
        task: {"train": len(train[task]), "held_out": len(held[task])} for task in train
    }
    candidates = {p.name: p.vectors for p in parts}
    candidates.update({"compound": features.matrix, "pss": embeddings})
    report["verification"] = {
        task: verification_table(candidates, pairs.left, pairs.right, pairs.label)
        for task, pairs in held.items()
        if pairs.n_positive and pairs.n_negative
    }
    print(
        f"pss neighbours: {report['neighbour_items']} items; "
        f"{report['category_only_items']} with only a category left to the category rule"
    )
    embeddings[~neighbour_items] = 0.0
    return PSSResult(embeddings.astype(np.float32), neighbour_items, features, report)


def items_for_neighbours(parts: list[Part], known: np.ndarray, settings: PSSSettings) -> np.ndarray:
    """The items the PSS source proposes neighbours for and from, of the ``known`` ones."""
    if settings.category_only_neighbours:
        return known.copy()
    return known & described_beyond_category(parts)


def described_beyond_category(parts: list[Part]) -> np.ndarray:
    """Items some part other than the category describes (behaviour, image or title)."""
    if not parts:
        raise DataError("compound features need at least one part")
    described = np.zeros(len(parts[0].vectors), dtype=bool)
    for part in parts:
        if part.name != CATEGORY_PART:
            described |= part_mask(part)
    return described


def format_table(verification: dict[str, dict[str, dict[str, float]]]) -> str:
    """The held-out verification figures as Markdown tables, one per task."""
    lines = []
    for task, rows in verification.items():
        columns = list(next(iter(rows.values())))
        lines += [f"{task} (held-out pairs)", "", "| embedding | " + " | ".join(columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.2f}" for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)
