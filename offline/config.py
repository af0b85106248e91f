"""Settings of the offline pipeline, and ``--param KEY=VALUE`` overrides of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from offline.data.sequences import CONVERSIONS
from offline.pss.stage import PSSSettings
from offline.ranker.settings import RankerSettings
from offline.sources import PSS, SOURCE_NAMES
from recsvc.candidates import CandidateSettings
from recsvc.contract import CANDIDATE_SOURCES
from recsvc.exceptions import ConfigError
from training.configs import Item2VecConfig, PersonalizedConfig


def _default_weights() -> dict[str, float]:
    return dict.fromkeys(SOURCE_NAMES, 1.0)


def _default_quotas() -> dict[str, int]:
    return {**dict.fromkeys(SOURCE_NAMES, 200), PSS: 20}


def _served_candidates() -> CandidateSettings:
    # The top V-SKNN items and the last visit's pool join the item's pool: chosen on the
    # validation days with the second stage (docs/RESULTS.md, issue 15).
    return CandidateSettings(session_pools=1, knn_items=100)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``recsvc pipeline`` can be tuned with (recorded in the bundle manifest).

    Attributes
    ----------
    pool_size : candidates kept per item
    alpha : item-CF weight of click Jaccard against attribute Jaccard
    source_weights : interleaving weight of each similarity source in the pool merge
    source_quotas : most candidates each similarity source may put in a pool (what is left
        goes to the business rules: same category, then new items)
    annoy_trees, annoy_search_k : annoy index settings (search_k -1: annoy's default,
        n_trees * k); the defaults reach recall@200 ~0.93 on Taobao (docs/RESULTS.md)
    annoy_partitions : indexes per embedding source, queried in parallel processes and
        merged (1: a single index)
    recall_sample : items sampled to measure annoy recall@pool_size against exact search
    cart_omega : loss multiplier of conversion targets in ``personalized_cart``
    conversion : which next-item events are conversions, for ``personalized_cart``'s
        weighting and ``recsvc eval``'s conversion rows: ``cart`` (the next visit includes
        an add-to-cart), ``buy`` (the user buys the next item once its visit has begun and
        before their visit after it begins) or ``both`` (either);
        :mod:`offline.data.sequences` defines them. Without any conversion case in the fit
        period ``personalized_cart`` is not trained
    init_from_item2vec : start the personalized input embeddings from item2vec's
    eval_history : earlier clicks per held-out user kept in the bundle for evaluation
    session_gap_s : longest pause inside one session (``sessions/*`` arrays for session-kNN)
    fallback_order : the stored order of each pool, which every fallback answer returns:
        ``merge`` (the sources interleaved by weight) or a source's own order (``itemcf``:
        best on both validation days, docs/RESULTS.md)
    ranker : the learned second stage (:class:`offline.ranker.settings.RankerSettings`),
        trained on the fit period's last ``span_hours`` with first-stage models fitted on
        the time before
    candidates : what a request adds to the item's pool for the second stage
        (:class:`recsvc.candidates.CandidateSettings`; the server and ``recsvc eval`` read it
        from the manifest when they rank with the bundle's second stage; the first stage
        alone ranks the item's pool)
    pss : the PSS stage and its SiameseNet (``pss.enabled=true`` adds the PSS source); the
        tower's hyper-parameters are those of :class:`training.configs.PSSConfig`, which
        :class:`offline.pss.stage.PSSSettings` extends: ``pss.width``, ``pss.epochs``, ...
    """

    pool_size: int = 200
    alpha: float = 0.9
    source_weights: dict[str, float] = field(default_factory=_default_weights)
    source_quotas: dict[str, int] = field(default_factory=_default_quotas)
    annoy_trees: int = 10
    annoy_search_k: int = 20000
    annoy_partitions: int = 1
    recall_sample: int = 1000
    cart_omega: float = 2.0
    conversion: str = "cart"
    init_from_item2vec: bool = False
    eval_history: int = 64
    session_gap_s: float = 1800.0
    fallback_order: str = "itemcf"
    candidates: CandidateSettings = field(default_factory=_served_candidates)
    ranker: RankerSettings = field(default_factory=RankerSettings)
    item2vec: Item2VecConfig = field(default_factory=Item2VecConfig)
    personalized: PersonalizedConfig = field(default_factory=PersonalizedConfig)
    pss: PSSSettings = field(default_factory=PSSSettings)

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.annoy_trees < 1:
            raise ConfigError("pool_size and annoy_trees must be >= 1")
        if self.cart_omega <= 0 or any(w <= 0 for w in self.source_weights.values()):
            raise ConfigError("cart_omega and source weights must be > 0")
        if self.conversion not in CONVERSIONS:
            raise ConfigError(
                f"conversion must be one of {', '.join(CONVERSIONS)} (the next-item events "
                f"that count as conversions), got {self.conversion!r}"
            )
        if any(q < 0 for q in self.source_quotas.values()):
            raise ConfigError("source quotas must be >= 0")
        if self.fallback_order not in ("merge", *CANDIDATE_SOURCES):
            raise ConfigError(
                f"fallback_order must be merge or one of {', '.join(CANDIDATE_SOURCES)}, "
                f"got {self.fallback_order!r}"
            )
        if not self.session_gap_s > 0:
            raise ConfigError(f"session_gap_s must be > 0, got {self.session_gap_s}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(key: str, current: Any, text: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return text.lower() in {"true", "1", "yes"}
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"--param {key}: {text!r} is not a {type(current).__name__}") from None
    return text


def apply_overrides(config: PipelineConfig, overrides: Iterable[str]) -> PipelineConfig:
    """``["personalized.epochs=8", "source_weights.itemcf=2"]`` applied to ``config``.

    Raises
    ------
    ConfigError
        Unknown key, malformed pair, or a value of the wrong type or out of range.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        config = _set(config, key.split("."), text, key)
    return config


def _set(obj: Any, path: list[str], text: str, key: str) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        if rest or head not in obj:
            raise ConfigError(f"--param {key}: unknown key (known: {sorted(obj)})")
        return {**obj, head: _convert(key, obj[head], text)}
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise ConfigError(f"--param {key}: unknown setting {head!r} (known: {sorted(names)})")
    current = getattr(obj, head)
    nested = dataclasses.is_dataclass(current) or isinstance(current, dict)
    if rest and not nested:
        raise ConfigError(f"--param {key}: {head!r} has no sub-settings")
    if not rest and nested:
        raise ConfigError(f"--param {key}: name one of the settings of {head!r}")
    value = _set(current, rest, text, key) if rest else _convert(key, current, text)
    return dataclasses.replace(obj, **{head: value})


def describe(config: PipelineConfig) -> str:
    """Every setting as ``key=value`` lines (what ``--param list`` prints)."""
    lines: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(f"{prefix}{f.name}.", getattr(value, f.name))
        elif isinstance(value, dict):
            for name, item in value.items():
                walk(f"{prefix}{name}.", item)
        else:
            lines.append(f"{prefix[:-1]}={value}")

    walk("", config)
    return "\n".join(lines)
