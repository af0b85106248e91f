"""Hyper-parameters of the models in ``training/``, free of TensorFlow.

The pipeline's settings (:class:`offline.config.PipelineConfig`) nest these, and importing
them must not load TensorFlow: each model module (:mod:`training.item2vec`,
:mod:`training.personalized`, :mod:`training.pss`) imports it at module level.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsvc.exceptions import ConfigError

#: Slots of the personalized model's user window: the current item and 7 earlier ones.
WINDOW = 8
#: Losses the PSS tower trains with (:attr:`PSSConfig.loss`).
PSS_LOSSES = ("contrastive", "hrms")
#: The PSS settings holding one value per HRMS hierarchy level.
HRMS_PER_LEVEL = ("hrms_alphas", "hrms_betas", "hrms_epsilons", "hrms_weights")


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
        Loss weight ω of conversion examples (``Examples.is_cart``: the target added to
        cart, bought or either, by the pipeline's ``conversion``) (1.0: plain
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
    """Hyper-parameters of :func:`training.pss.train_pss`: the one definition of them.

    The pipeline's PSS settings (:class:`offline.pss.stage.PSSSettings`) extend this class
    with the stage's own settings, so each field here is also ``--param pss.<name>=...``,
    under the same name, and is recorded as such in the bundle manifest.

    Attributes
    ----------
    width, depth : int
        Output width and number of the FC layers (the paper's best: 256 x 4).
    loss : {"contrastive", "hrms"}
    margin : float
        Contrastive margin on the distance of normalised embeddings.
    epochs, batch_size, learning_rate : training loop.
    hrms_alphas, hrms_betas, hrms_epsilons, hrms_weights : str
        Comma-separated, one value per level of the HRMS hierarchy (the defaults: two
        levels): the loss scales, the miner margin and the level weights
        (:meth:`hrms_values` parses them); ``hrms_lambda`` is shared by the levels.
    """

    width: int = 256
    depth: int = 4
    loss: str = "contrastive"
    margin: float = 1.0
    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 0.001
    hrms_alphas: str = "2,2"
    hrms_betas: str = "50,50"
    hrms_epsilons: str = "0.1,0.1"
    hrms_weights: str = "1,1"
    hrms_lambda: float = 0.5

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ConfigError(f"pss.width and pss.depth must be >= 1: {self.width}, {self.depth}")
        if self.loss not in PSS_LOSSES:
            raise ConfigError(f"pss.loss must be contrastive or hrms, got {self.loss!r}")
        if self.margin <= 0 or self.epochs < 0 or self.batch_size < 2 or self.learning_rate <= 0:
            raise ConfigError(f"PSSConfig has an invalid margin, epochs, batch or rate: {self}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Output width of each FC layer of the tower."""
        return (self.width,) * self.depth

    def hrms_values(self, name: str) -> tuple[float, ...]:
        """A comma-separated HRMS setting (``"hrms_alphas"``, ...) as floats, one per level.

        Raises
        ------
        ConfigError
            ``name`` is not one of :data:`HRMS_PER_LEVEL`, or its text is not numbers.
        """
        if name not in HRMS_PER_LEVEL:
            raise ConfigError(
                f"{name!r} is not one of the per-level HRMS settings {HRMS_PER_LEVEL}"
            )
        text = getattr(self, name)
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"pss.{name}: {text!r} is not comma-separated numbers") from None
