import numpy as np
import pytest

from offline.features.compound import Part, compound_features, reduce_dimensions
from recsvc.exceptions import DataError


def test_parts_are_normalised_and_concatenated() -> None:
    behaviour = Part("behaviour", np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]), np.ones(3, bool))
    category = Part(
        "category",
        np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]),
        np.array([True, True, False]),
    )
    features = compound_features([behaviour, category], size=8)
    expected = [
        [0.6, 0.8, 0.0, 1.0, 0.0],  # 3-4-5 triangle, then the category one-hot
        [0.0, 0.0, 1.0, 0.0, 0.0],  # an all-zero behaviour row is unknown
        [1.0, 0.0, 0.0, 0.0, 0.0],  # the category part is unknown for item 2
    ]
    np.testing.assert_allclose(features.matrix, expected, atol=1e-6)
    assert features.parts == [("behaviour", 0, 2), ("category", 2, 5)]
    assert features.known.tolist() == [True, True, True]
    np.testing.assert_allclose(features.part("category")[0], [0.0, 1.0, 0.0])


def test_pca_keeps_the_direction_of_largest_variance() -> None:
    rng = np.random.default_rng(0)
    line = rng.normal(size=(200, 1)) * np.array([[1.0, 1.0, 0.0]]) / np.sqrt(2)
    noisy = line + rng.normal(scale=0.01, size=(200, 3))
    reduced = reduce_dimensions(noisy, np.ones(200, bool), size=1)
    assert reduced.shape == (200, 1)
    # The one kept coordinate is (up to sign) the position along the line.
    assert abs(np.corrcoef(reduced[:, 0], line[:, 0])[0, 1]) > 0.999


def test_parts_must_cover_the_same_items() -> None:
    with pytest.raises(DataError, match="expected 2 rows"):
        compound_features(
            [
                Part("a", np.ones((2, 2)), np.ones(2, bool)),
                Part("b", np.ones((3, 2)), np.ones(3, bool)),
            ]
        )
