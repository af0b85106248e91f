"""The compiled scoring core against the same maths written in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc import _scoring
from recsvc.scoring import PoolRanker, case_scores, user_vector, window_scores

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


def pools_of(seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    pools = rng.integers(-1, N_ITEMS, size=(N_ITEMS, POOL)).astype(np.int32)
    sources = rng.integers(0, 256, size=(N_ITEMS, POOL)).astype(np.uint8)
    return pools, sources, [f"item-{n}" for n in range(N_ITEMS)]


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
    numpy_ints = window_scores(list(np.array([3, -1])), pool, inputs, outputs, weights)
    assert numpy_ints.tobytes() == window_scores([3, -1], pool, inputs, outputs, weights).tobytes()
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
def test_pool_ranker_orders_like_a_stable_argsort(k: int) -> None:
    """Output rows drawn from three vectors give exact ties; NaN rows give NaN scores and
    unscorable items -inf: the order must still be numpy's stable argsort of -scores."""
    rng = np.random.default_rng(k)
    inputs, _, weights, scorable = model(k)
    outputs = rng.normal(size=(3, DIM)).astype(np.float32)[rng.integers(0, 3, N_ITEMS)]
    outputs[rng.random(N_ITEMS) < 0.1] = np.nan
    pools, sources, ids = pools_of(k)
    ranker = PoolRanker(pools, sources, ids, inputs, outputs, weights, scorable)
    for row in range(20):
        window = rng.integers(-1, N_ITEMS, size=WIDTH).tolist()
        scores = window_scores(window, pools[row], inputs, outputs, weights, scorable)
        for keep in (None, rng.random(POOL) < 0.6):
            positions = numpy_top(scores, pools[row], keep, k)
            items, values, flags = ranker.rank(row, window, keep, k)
            assert items == [ids[i] for i in pools[row, positions]]
            np.testing.assert_array_equal(values, scores[positions])
            assert flags == sources[row, positions].tolist()


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


def test_pool_ranker_without_a_window_keeps_the_offline_order() -> None:
    pools, sources, ids = pools_of(9)
    ranker = PoolRanker(pools, sources, ids)  # no model: only the offline order
    slots = np.flatnonzero(pools[3] >= 0)[:5]
    items, scores, flags = ranker.rank(3, None, None, 5)
    assert items == [ids[i] for i in pools[3, slots]]
    assert scores == (1 - slots / POOL).astype(np.float32).tolist()
    assert flags == sources[3, slots].tolist()


def test_pool_ranker_errors() -> None:
    inputs, outputs, weights, scorable = model()
    pools, sources, ids = pools_of(10)
    ranker = PoolRanker(pools, sources, ids, inputs, outputs, weights, scorable)
    with pytest.raises(IndexError, match="row 50 is out of range"):
        ranker.rank(N_ITEMS, None, None, 3)
    with pytest.raises(ValueError, match="k must not be negative"):
        ranker.rank(0, None, None, -1)
    with pytest.raises(ValueError, match="keep must have one entry per pool slot"):
        ranker.rank(0, None, np.ones(3, bool), 3)
    with pytest.raises(ValueError, match="window has 9 slots"):
        ranker.rank(0, [1] * 9, None, 3)
    with pytest.raises(RuntimeError, match="initialised once"):
        ranker.__init__(pools, sources, ids)
    with pytest.raises(ValueError, match="a window needs a model"):
        PoolRanker(pools, sources, ids).rank(0, [1], None, 3)
    with pytest.raises(ValueError, match="shape of pools"):
        PoolRanker(pools, np.ascontiguousarray(sources[:, :3]), ids)
    with pytest.raises(ValueError, match="one id per row"):
        PoolRanker(pools, sources, ids[:-1])
    with pytest.raises(TypeError, match="list of str"):
        PoolRanker(pools, sources, tuple(ids))
    with pytest.raises(TypeError, match="pool_sources must be a 2-d array of uint8"):
        PoolRanker(pools, sources.astype(np.int32), ids)
    with pytest.raises(ValueError, match="one embedding per item"):
        PoolRanker(pools[:10], sources[:10], ids[:10], inputs, outputs, weights, scorable)
