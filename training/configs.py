"""Hyper-parameters of the models in ``training/``, free of TensorFlow.

The pipeline's settings (:class:`offline.config.PipelineConfig`) nest these, and importing
them must not load TensorFlow: each model module (:mod:`training.item2vec`,
:mod:`training.personalized`, :mod:`training.pss`) imports it at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from recsvc.exceptions import ConfigError

#: Slots of the personalized model's user window: the current item and 7 earlier ones.
WINDOW = 8


@dataclass(frozen=True)
class Item2VecConfig:
    """Hyper-parameters of :func:`training.item2vec.train_item2vec`.

    Attributes
    ----------
    dim : int
        Embedding size.
    window : int
        Context items taken on each side of the centre item.
    negatives : int
        Random negatives per positive pair.
    epochs : int
    batch_size : int
        Positive pairs per step.
    learning_rate : float
        Adam step size.
    unigram_power : float
        Negatives are drawn with probability proportional to ``clicks ** unigram_power``.
    optimizer : {"lazy_adam", "adam"}
        See :func:`training.base.fit`.
    """

    dim: int = 64
    window: int = 2
    negatives: int = 8
    epochs: int = 5
    batch_size: int = 1024
    learning_rate: float = 0.005
    unigram_power: float = 0.75
    optimizer: str = "lazy_adam"

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negatives", "epochs", "batch_size"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ConfigError(f"Item2VecConfig.{name} is out of range: {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"Item2VecConfig.learning_rate must be > 0: {self.learning_rate}")


@dataclass(frozen=True)
class PersonalizedConfig:
    """Hyper-parameters of :func:`training.personalized.train_personalized`.

    Attributes
    ----------
    dim : int
        Embedding size.
    window : int
        Slots of the user window (must match the examples).
    negatives : int
        Negatives per batch, shared by its examples, drawn from the unigram^0.75
        distribution of targets.
    pool_negatives : int
        Negatives per example drawn uniformly from the current item's candidate pool
        (needs ``pools``); 0 turns that term off.
    epochs : int
    batch_size : int
    learning_rate : float
        Adam step size.
    l2 : float
        Penalty on the squared norms of the embedding rows used by a batch.
    cart_weight : float
        Loss weight ω of examples whose target was added to cart (1.0: plain
        ``personalized``; 2.0: ``personalized_cart``).
    unigram_power : float
        Sampled negatives are drawn proportionally to ``target count ** unigram_power``.
    optimizer : {"lazy_adam", "adam"}
        See :func:`training.base.fit`.
    """

    dim: int = 64
    window: int = WINDOW
    negatives: int = 1024
    pool_negatives: int = 0
    epochs: int = 12
    batch_size: int = 512
    learning_rate: float = 0.002
    l2: float = 0.03
    cart_weight: float = 1.0
    unigram_power: float = 0.75
    optimizer: str = "lazy_adam"

    def __post_init__(self) -> None:
        for name in ("dim", "window", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PersonalizedConfig.{name} must be >= 1: {getattr(self, name)}")
        for name in ("negatives", "pool_negatives", "epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PersonalizedConfig.{name} must be >= 0: {getattr(self, name)}")
        if self.negatives + self.pool_negatives == 0:
            raise ConfigError("PersonalizedConfig needs negatives or pool_negatives > 0")
        if self.learning_rate <= 0 or self.l2 < 0 or self.cart_weight <= 0:
            raise ConfigError(f"PersonalizedConfig has an invalid rate, l2 or weight: {self}")


@dataclass(frozen=True)
class PSSConfig:
    """Hyper-parameters of :func:`training.pss.train_pss`.

    Attributes
    ----------
    widths : tuple of int
        Output width of each FC layer (the paper's best: 256 x 4).
    loss : {"contrastive", "hrms"}
    margin : float
        Contrastive margin on the distance of normalised embeddings.
    task_weights : mapping of task name to weight
        Tasks missing here weigh 1.
    hrms_epsilons, hrms_alphas, hrms_betas, hrms_weights : tuples of float
        HRMS miner margin, loss scales and level weights, one per hierarchy level (default:
        one level, the category; weights default to 1); ``hrms_lambda`` is shared.
    epochs, batch_size, learning_rate : training loop.
    """

    widths: tuple[int, ...] = (256, 256, 256, 256)
    loss: str = "contrastive"
    margin: float = 1.0
    task_weights: Mapping[str, float] = field(default_factory=dict)
    hrms_epsilons: tuple[float, ...] = (0.1,)
    hrms_alphas: tuple[float, ...] = (2.0,)
    hrms_betas: tuple[float, ...] = (50.0,)
    hrms_weights: tuple[float, ...] = ()
    hrms_lambda: float = 0.5
    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 0.001

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"PSSConfig.widths must be positive, got {self.widths}")
        if self.loss not in ("contrastive", "hrms"):
            raise ConfigError(f"PSSConfig.loss must be contrastive or hrms, got {self.loss!r}")
        if self.margin <= 0 or self.epochs < 0 or self.batch_size < 2 or self.learning_rate <= 0:
            raise ConfigError(f"PSSConfig has an invalid margin, epochs, batch or rate: {self}")
