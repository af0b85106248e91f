"""Source name -> how to build that candidate source: what ``recsvc pipeline`` and
``recsvc train pss`` both build their sources with.

A factory takes a :class:`SourceInputs` (the data, of which each source reads its part),
the settings (:class:`SourceSettings`, which :class:`offline.config.PipelineConfig`
satisfies) and the seed. The implementations are imported when a source is built, so that
importing the registry stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from offline.data.interactions import Interactions
from offline.sources import IMAGE, ITEM2VEC, ITEMCF, PSS
from offline.sources.base import CandidateSource
from recsvc.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SourceSettings(Protocol):
    """The settings the registered sources are built with (``PipelineConfig`` has them):
    item-CF's ``alpha``, the embedding sources' annoy settings."""

    @property
    def alpha(self) -> float: ...
    @property
    def annoy_trees(self) -> int: ...
    @property
    def annoy_search_k(self) -> int: ...
    @property
    def annoy_partitions(self) -> int: ...


@dataclass
class SourceInputs:
    """What the sources are built from; each factory reads the part it needs.

    Attributes
    ----------
    fit : Interactions
        The training events (item-CF counts their clicks).
    item_category : int array, shape (n_items,)
        -1 when unknown (item-CF's attribute part).
    embeddings : source name -> (float array (n_items, d), bool array (n_items,) known)
        The vectors of each embedding source, added as the stages produce them.
    spark : SparkSession or None
        With ``--engine spark``: item-CF computes its neighbours there.
    """

    fit: Interactions
    item_category: np.ndarray
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    spark: SparkSession | None = None


Factory = Callable[[SourceInputs, SourceSettings, int], CandidateSource]


def _itemcf(inputs: SourceInputs, settings: SourceSettings, seed: int) -> CandidateSource:
    if inputs.spark is not None:
        from offline.spark.itemcf import SparkItemCF

        return SparkItemCF(inputs.spark, inputs.fit, inputs.item_category, alpha=settings.alpha)
    from offline.sources.itemcf import ItemCF

    return ItemCF(inputs.fit, inputs.item_category, alpha=settings.alpha)


def _embedding(name: str) -> Factory:
    """The factory of the embedding source ``name``: cosine neighbours via annoy."""

    def build(inputs: SourceInputs, settings: SourceSettings, seed: int) -> CandidateSource:
        from offline.sources.embedding import EmbeddingSource

        if name not in inputs.embeddings:
            raise DataError(f"source {name!r} needs its embeddings, and none were given")
        vectors, known = inputs.embeddings[name]
        return EmbeddingSource(
            name,
            vectors,
            known,
            n_trees=settings.annoy_trees,
            search_k=settings.annoy_search_k,
            seed=seed,
            partitions=settings.annoy_partitions,
        )

    return build


#: Every candidate source by its name: ``SOURCE_NAMES``, in that order (a new source adds
#: its name there and its factory here).
REGISTRY: dict[str, Factory] = {
    ITEMCF: _itemcf,
    ITEM2VEC: _embedding(ITEM2VEC),
    IMAGE: _embedding(IMAGE),
    PSS: _embedding(PSS),
}


def build_source(
    name: str, inputs: SourceInputs, settings: SourceSettings, seed: int
) -> CandidateSource:
    """The candidate source ``name`` built from ``inputs``.

    Raises
    ------
    ConfigError
        ``name`` is not registered.
    DataError
        An embedding source whose embeddings are not in ``inputs``.
    """
    if name not in REGISTRY:
        raise ConfigError(f"unknown candidate source {name!r} (known: {list(REGISTRY)})")
    return REGISTRY[name](inputs, settings, seed)
