"""The compiled scoring core against the same maths written in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc import _scoring
from recsvc.scoring import case_scores, rank_pool, user_vector, window_scores

N_ITEMS, DIM, WIDTH, POOL = 50, 13, 8, 40  # a dimension that is no multiple of the lanes


def model(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    outputs = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    weights = rng.uniform(0.2, 2.0, size=WIDTH).astype(np.float32)
    scorable = rng.random(N_ITEMS) > 0.2
    return inputs, outputs, weights, scorable


def numpy_scores(window, pool, inputs, outputs, weights, scorable) -> np.ndarray:
    user = user_vector(window, inputs, weights)
    scores = (outputs[np.maximum(pool, 0)] @ user).astype(np.float32)
    scores[(pool < 0) | ~scorable[np.maximum(pool, 0)]] = -np.inf
    return scores


def numpy_top(scores, pool, keep, k) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    allowed = (pool >= 0) & (np.ones(len(pool), bool) if keep is None else keep)
    return order[allowed[order]][:k].tolist()


@pytest.mark.parametrize("seed", range(5))
def test_scores_are_the_numpy_maths(seed: int) -> None:
    inputs, outputs, weights, scorable = model(seed)
    rng = np.random.default_rng(100 + seed)
    pool = rng.integers(0, N_ITEMS, size=POOL).astype(np.int32)
    pool[-7:] = -1
    window = rng.integers(-1, N_ITEMS, size=WIDTH).tolist()
    got = window_scores(window, pool, inputs, outputs, weights, scorable)
    want = numpy_scores(window, pool, inputs, outputs, weights, scorable)
    assert got.dtype == np.float32
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


def test_a_window_with_no_item_scores_zero_and_a_short_window_is_fine() -> None:
    inputs, outputs, weights, _ = model()
    pool = np.arange(10, dtype=np.int32)
    assert (window_scores([-1] * WIDTH, pool, inputs, outputs, weights) == 0).all()
    short = window_scores([3], pool, inputs, outputs, weights)
    np.testing.assert_allclose(short, outputs[:10] @ (weights[0] * inputs[3]), rtol=1e-5)


def test_case_scores_are_the_served_scores_bit_for_bit() -> None:
    inputs, outputs, weights, scorable = model()
    rng = np.random.default_rng(1)
    windows = rng.integers(-1, N_ITEMS, size=(20, WIDTH))
    pools = rng.integers(-1, N_ITEMS, size=(20, POOL))  # int64, converted once
    batch = case_scores(windows, pools, inputs, outputs, weights, scorable)
    for window, pool, row in zip(windows, pools.astype(np.int32), batch, strict=True):
        one = window_scores(window.tolist(), pool, inputs, outputs, weights, scorable)
        assert one.tobytes() == row.tobytes()


@pytest.mark.parametrize("k", [0, 1, 5, POOL, POOL + 10])
def test_top_positions_orders_like_a_stable_argsort(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(20):
        scores = rng.integers(0, 6, size=POOL).astype(np.float32)  # many ties
        scores[rng.random(POOL) < 0.1] = -np.inf
        scores[rng.random(POOL) < 0.05] = np.nan
        pool = rng.integers(-1, N_ITEMS, size=POOL).astype(np.int32)
        for keep in (None, rng.random(POOL) < 0.6):
            positions, items, values = _scoring.top_positions(scores, pool, keep, k)
            assert positions == numpy_top(scores, pool, keep, k)
            assert items == pool[positions].tolist()
            np.testing.assert_array_equal(values, scores[positions])


def test_bad_arguments_are_clear_errors() -> None:
    inputs, outputs, weights, scorable = model()
    pool = np.arange(10, dtype=np.int32)
    out = np.empty(10, np.float32)
    score = _scoring.pool_scores
    with pytest.raises(TypeError, match="input_embeddings must be a 2-d array of float32"):
        score([1], pool, inputs.astype(np.float64), outputs, weights, None, out)
    with pytest.raises(TypeError, match="pool must be a 1-d array of int32"):
        score([1], pool.astype(np.int64), inputs, outputs, weights, None, out)
    with pytest.raises(TypeError, match="C-contiguous"):
        score([1], np.arange(20, dtype=np.int32)[::2], inputs, outputs, weights, None, out)
    with pytest.raises(TypeError, match="writable"):
        score([1], pool, inputs, outputs, weights, None, np.frombuffer(bytes(40), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        score([1], pool, inputs, outputs[:5], weights, None, out)
    with pytest.raises(ValueError, match="one entry per item"):
        score([1], pool, inputs, outputs, weights, scorable[:3], out)
    with pytest.raises(ValueError, match="one entry per pool slot"):
        score([1], pool, inputs, outputs, weights, None, out[:3])
    with pytest.raises(ValueError, match="window has 9 slots"):
        score([1] * 9, pool, inputs, outputs, weights, None, out)
    with pytest.raises(IndexError, match="window item 50"):
        score([N_ITEMS], pool, inputs, outputs, weights, None, out)
    with pytest.raises(IndexError, match="pool item 50"):
        score([1], np.array([N_ITEMS], np.int32), inputs, outputs, weights, None, out[:1])
    with pytest.raises(TypeError, match="sequence"):
        score(7, pool, inputs, outputs, weights, None, out)
    with pytest.raises(ValueError, match="k must not be negative"):
        _scoring.top_positions(out, pool, None, -1)
    with pytest.raises(ValueError, match="same length"):
        _scoring.top_positions(out, pool[:3], None, 2)


def test_rank_pool_is_top_positions_of_the_window_scores() -> None:
    inputs, outputs, weights, scorable = model()
    rng = np.random.default_rng(7)
    for _ in range(20):
        pool = rng.integers(-1, N_ITEMS, size=POOL).astype(np.int32)
        window = rng.integers(-1, N_ITEMS, size=WIDTH).tolist()
        keep = rng.random(POOL) < 0.7
        scores = window_scores(window, pool, inputs, outputs, weights, scorable)
        for k in (1, 10, POOL):
            expected = _scoring.top_positions(scores, pool, keep, k)
            got = rank_pool(window, pool, inputs, outputs, weights, scorable, keep, k)
            assert got == expected
    with pytest.raises(ValueError, match="k must not be negative"):
        rank_pool([1], pool, inputs, outputs, weights, scorable, None, -1)
    with pytest.raises(ValueError, match="same length"):
        rank_pool([1], pool, inputs, outputs, weights, scorable, keep[:3], 2)
