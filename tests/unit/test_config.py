import pytest

from offline.config import PipelineConfig, apply_overrides, describe
from recsvc.exceptions import ConfigError


def test_overrides_reach_nested_settings_with_their_types():
    config = apply_overrides(
        PipelineConfig(),
        ["pool_size=150", "personalized.epochs=3", "source_weights.itemcf=2.5",
         "init_from_item2vec=false", "item2vec.learning_rate=0.01"],
    )  # fmt: skip
    assert config.pool_size == 150
    assert config.personalized.epochs == 3
    assert config.source_weights["itemcf"] == 2.5
    assert config.init_from_item2vec is False
    assert config.item2vec.learning_rate == 0.01
    assert "personalized.epochs=3" in describe(config).splitlines()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pool_sise=3", "unknown setting 'pool_sise'"),
        ("personalized=3", "name one of the settings"),
        ("pool_size.x=3", "has no sub-settings"),
        ("source_weights.bogus=1", "unknown key"),
        ("pool_size=big", "'big' is not a int"),
        ("pool_size", "KEY=VALUE"),
        ("pool_size=0", ">= 1"),
        ("personalized.window=0", "must be >= 1"),
        ("conversion=foo", "conversion must be one of cart, buy, both"),
    ],
)
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(PipelineConfig(), [override])


@pytest.mark.parametrize(
    "text",
    ["ranker.learning_rate=nan", "ranker.min_data_in_leaf=0", "ranker.early_stopping=0",
     "ranker.span_hours=0", "ranker.valid_share=1", "ranker.negatives=0"],
)  # fmt: skip
def test_bad_second_stage_settings_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides(PipelineConfig(), [text])
