"""recsvc.forest against LightGBM itself: the same raw scores, malformed models refused."""

from __future__ import annotations

import re
import time
from typing import Any

import lightgbm
import numpy as np
import pytest

from recsvc import _scoring
from recsvc.forest import Forest

N_FEATURES = 22
ZERO = np.float32(1e-35)  # LightGBM's kZeroThreshold: features within it are taken as 0


def training_data(seed: int, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Features with NaNs, exact zeros, values within kZeroThreshold of zero and a few
    discrete columns (so that thresholds fall on floats rows can equal), and a label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[:, :4] = rng.integers(0, 6, size=(n, 4))
    x[rng.random(x.shape) < 0.15] = 0.0
    tiny = rng.random(x.shape) < 0.02
    x[tiny] = rng.choice([1e-36, -1e-36, 1e-35, -1e-35, 1e-30], size=int(tiny.sum()))
    x[rng.random(x.shape) < 0.15] = np.nan
    filled = np.nan_to_num(x, nan=-1.0)
    signal = filled[:, 0] - filled[:, 1] + 0.5 * filled[:, 4] * filled[:, 5] + filled[:, 6]
    y = signal + rng.normal(size=n)
    return x, y


def train(objective: str, seed: int, rounds: int = 60, **params: Any) -> lightgbm.Booster:
    x, y = training_data(seed)
    if objective == "lambdarank":
        labels = np.clip(np.digitize(y, [0.0, 1.0, 2.0]), 0, 3)
        data = lightgbm.Dataset(x, labels, group=[50] * (len(x) // 50))
    else:
        data = lightgbm.Dataset(x, (y > 0).astype(float))
    settings = {"objective": objective, "verbosity": -1, "seed": seed, "num_threads": 1}
    settings |= {"num_leaves": 31, "max_depth": 8, "min_data_in_leaf": 5, **params}
    return lightgbm.train(settings, data, num_boost_round=rounds)


def with_tree_sizes(text: str) -> str:
    """``text`` with its tree_sizes line recomputed: LightGBM slices the trees by it (and
    aborts the process when it is off), so a model edited by hand needs it fixed."""
    starts = [m.start() for m in re.finditer(r"^Tree=", text, re.M)]
    ends = [*starts[1:], text.index("end of trees")]
    sizes = " ".join(str(end - start) for start, end in zip(starts, ends, strict=True))
    return re.sub(r"^tree_sizes=.*$", f"tree_sizes={sizes}", text, count=1, flags=re.M)


def thresholds(text: str) -> np.ndarray:
    values = [
        float(v) for line in re.findall(r"^threshold=(.*)$", text, re.M) for v in line.split()
    ]
    return np.array(values)


def probe_rows(text: str, seed: int, n: int = 3000) -> np.ndarray:
    """Fresh rows: mostly random, with NaNs, zeros and near-zeros, and many cells exactly on
    a split's threshold (as float32) or one float either side of it."""
    x, _ = training_data(seed + 1000, n)
    rng = np.random.default_rng(seed)
    split = thresholds(text)
    on = split.astype(np.float32)
    candidates = np.concatenate(
        [on, np.nextafter(on, np.float32(np.inf)), np.nextafter(on, np.float32(-np.inf))]
    )
    mask = rng.random(x.shape) < 0.3
    x[mask] = rng.choice(candidates, size=int(mask.sum()))
    return x


MODELS = {
    "lambdarank, NaN missing": lambda: train("lambdarank", 0),
    "binary, NaN missing": lambda: train("binary", 1, rounds=80),
    "binary, zero as missing": lambda: train("binary", 2, zero_as_missing=True),
    "lambdarank, missing off": lambda: train("lambdarank", 3, use_missing=False),
    "binary, deep and leafy": lambda: train("binary", 4, num_leaves=63, max_depth=-1),
}


@pytest.fixture(scope="module", params=list(MODELS))
def booster(request: pytest.FixtureRequest) -> lightgbm.Booster:
    return MODELS[request.param]()


def test_scores_are_lightgbm_raw_scores(booster: lightgbm.Booster) -> None:
    text = booster.model_to_string()
    forest = Forest.from_model_text(text)
    assert forest.n_trees == booster.num_trees() >= 50
    assert forest.feature_names == tuple(booster.feature_name())
    x = probe_rows(text, seed=7)
    got = forest.scores(x)
    want = booster.predict(x, raw_score=True)
    assert got.dtype == np.float64 and got.shape == (len(x),)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # Same decisions and LightGBM's summation order: the very same doubles.
    np.testing.assert_array_equal(got, want)


def test_the_models_exercise_every_missing_type_and_near_zero_thresholds() -> None:
    seen: set[int] = set()
    near_zero = 0
    for make in MODELS.values():
        text = make().model_to_string()
        forest = Forest.from_model_text(text)
        seen |= set(np.unique(forest.decision_type).tolist())
        near_zero += int(np.sum(np.abs(forest.threshold) <= 2 * float(ZERO)))
    missing = {(t >> 2) & 3 for t in seen}
    assert missing == {0, 1, 2} and {t & 2 for t in seen} == {0, 2}
    assert near_zero > 0


@pytest.mark.parametrize("decision_type", [0, 2, 4, 6, 8, 10])
def test_each_decision_type_as_lightgbm_reads_it(decision_type: int) -> None:
    """The same trees with every split rewritten to one missing type and default side,
    read by LightGBM and by us: NaN, 0, near-zero and threshold values go the same way."""
    text = train("binary", 5, rounds=50).model_to_string()

    def rewrite(match: re.Match[str]) -> str:
        return "decision_type=" + " ".join(str(decision_type) for _ in match[1].split())

    text = with_tree_sizes(re.sub(r"^decision_type=(.*)$", rewrite, text, flags=re.M))
    x = probe_rows(text, seed=decision_type)
    x[::7, :] = 0.0
    x[::11, :] = np.nan
    x[::13, :] = -ZERO
    want = lightgbm.Booster(model_str=text).predict(x, raw_score=True)
    np.testing.assert_array_equal(Forest.from_model_text(text).scores(x), want)


def stump(threshold: str, decision_type: int = 2, leaves: str = "-1 1") -> str:
    """A one-split model on two features, written by hand in LightGBM's format."""
    return with_tree_sizes(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n"
        "max_feature_idx=1\nobjective=binary sigmoid:1\nfeature_names=a b\n"
        "feature_infos=[-1:1] [-1:1]\ntree_sizes=1\n\n"
        "Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=1\nsplit_gain=1\n"
        f"threshold={threshold}\ndecision_type={decision_type}\nleft_child=-1\n"
        f"right_child=-2\nleaf_value={leaves}\nleaf_weight=1 1\nleaf_count=1 1\n"
        "internal_value=0\ninternal_weight=2\ninternal_count=2\nis_linear=0\nshrinkage=1\n\n\n"
        "end of trees\n\nfeature_importances:\nb=1\n\nparameters:\n[boosting: gbdt]\n"
        "end of parameters\n\npandas_categorical:null\n"
    )


@pytest.mark.parametrize(
    "threshold", ["0.5", "1.0000000180025095e-35", "-1.0000000180025095e-35", "0", "1e+300"]
)
def test_a_value_equal_to_the_threshold_goes_left(threshold: str) -> None:
    text = stump(threshold)
    with np.errstate(over="ignore"):
        t = np.float32(float(threshold))
    column = np.array(
        [
            t,
            np.nextafter(t, np.float32(1)),
            np.nextafter(t, np.float32(-1)),
            0.0,
            ZERO,
            -ZERO,
            1e-36,
            np.nan,
            np.inf,
            -np.inf,
        ],
        dtype=np.float32,
    )
    x = np.stack([np.zeros_like(column), column], axis=1)
    got = Forest.from_model_text(text).scores(x)
    want = lightgbm.Booster(model_str=text).predict(x, raw_score=True)
    np.testing.assert_array_equal(got, want)
    if float(t) == float(threshold) and abs(t) > ZERO:
        assert got[0] == -1.0  # x <= threshold: left
    if float(threshold) == -float(ZERO):
        assert got[0] == 1.0  # -1e-35 is taken as 0, and 0 > -1e-35: right


def test_leaf_values_already_hold_the_shrinkage() -> None:
    booster = train("binary", 6, rounds=50, learning_rate=0.1)
    text = booster.model_to_string()
    assert "shrinkage=0.1\n" in text  # recorded, and not to be applied again
    x = probe_rows(text, seed=6)
    np.testing.assert_array_equal(
        Forest.from_model_text(text).scores(x), booster.predict(x, raw_score=True)
    )


def test_a_single_leaf_tree_adds_its_value() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, N_FEATURES)).astype(np.float32)
    data = lightgbm.Dataset(x, np.full(200, 3.0))
    booster = lightgbm.train({"objective": "regression", "verbosity": -1}, data, 3)
    text = booster.model_to_string()
    assert "num_leaves=1\n" in text
    forest = Forest.from_model_text(text)
    np.testing.assert_array_equal(forest.scores(x[:9]), booster.predict(x[:9], raw_score=True))


def test_any_number_of_rows() -> None:
    booster = train("binary", 7, rounds=50)
    forest = Forest.from_model_text(booster.model_to_string())
    x = probe_rows(booster.model_to_string(), seed=8, n=40)
    for n in (0, 1, 7, 8, 9, 17, 40):
        want = booster.predict(x[:n], raw_score=True) if n else np.zeros(0)
        np.testing.assert_array_equal(forest.scores(x[:n]), want)
    # A strided view is made contiguous; anything but float32 is refused.
    np.testing.assert_array_equal(forest.scores(x[::3]), booster.predict(x[::3], raw_score=True))
    with pytest.raises(TypeError, match="float32"):
        forest.scores(x.astype(np.float64))
    with pytest.raises(ValueError, match="22 features"):
        forest.scores(x[:, :5])


# ---- malformed models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def model_text() -> str:
    return train("lambdarank", 8, rounds=50).model_to_string()


def test_truncated_models_are_refused(model_text: str) -> None:
    end = model_text.index("end of parameters")
    cuts = [0, 1, 5, 40, model_text.index("Tree=0"), model_text.index("Tree=3") + 30]
    cuts += [int(end * share) for share in np.linspace(0.01, 0.999, 60)]
    cuts += [model_text.index("end of trees"), model_text.index("feature_importances:") + 30]
    cuts += [model_text.index("parameters:") + 20, end]
    for cut in cuts:
        with pytest.raises(ValueError):
            Forest.from_model_text(model_text[:cut])


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("num_class=1", "num_class=3", "num_class=3"),
        ("max_feature_idx=21", "max_feature_idx=30", "feature_names"),
        ("\nleaf_value=", "\nleaf_value=0.5 ", "leaf_value has"),
        ("\nleft_child=", "\nleft_child=0 ", "left_child has"),
        ("\nthreshold=", "\nthreshold=x", "threshold is not a list of numbers"),
        ("\nsplit_feature=", "\nsplit_feature=99 ", "split_feature has|feature 99"),
        ("\nnum_leaves=", "\nnum_leaves=1", "leaf_value has"),
        ("Tree=1\n", "Tree=5\n", "expected 'Tree=1'"),
        ("\nnum_cat=0", "\nnum_cat=1", "categorical"),
        ("\nis_linear=0", "\nis_linear=1", "linear"),
        ("\ndecision_type=", "\ndecision_type=9999999999 ", "int32|decision_type has"),
        ("tree_sizes=", "average_output\ntree_sizes=", "random forest"),
    ],
)
def test_broken_models_are_refused(model_text: str, old: str, new: str, message: str) -> None:
    assert old in model_text
    with pytest.raises(ValueError, match=message):
        Forest.from_model_text(model_text.replace(old, new, 1))


def test_broken_trees_are_refused(model_text: str) -> None:
    def tree0(key: str, values: str) -> str:
        head, rest = model_text.split("Tree=0\n", 1)
        block, tail = rest.split("\n\n", 1)
        block = re.sub(rf"^{key}=.*$", f"{key}={values}", block, flags=re.M)
        return f"{head}Tree=0\n{block}\n\n{tail}"

    def children(text: str) -> list[int]:
        line = re.search(r"^left_child=(.*)$", text.split("Tree=1")[0], re.M)
        assert line is not None
        return [int(v) for v in line[1].split()]

    left = children(model_text)
    loop = [0, *left[1:]]  # the root its own left child
    dangling = [*left[:-1], -999]
    duplicated = [left[0], left[0], *left[2:]]
    for values, message in [
        (loop, "out of range"),
        (dangling, "out of range"),
        (duplicated, "binary tree|out of range"),
    ]:
        with pytest.raises(ValueError, match=message):
            Forest.from_model_text(tree0("left_child", " ".join(map(str, values))))
    with pytest.raises(ValueError, match="decision_type"):
        Forest.from_model_text(tree0("decision_type", " ".join(["12"] * len(left))))


def test_categorical_splits_are_refused() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    x[:, 0] = rng.integers(0, 8, size=2000)
    y = (x[:, 0] % 3 == 0) + rng.normal(size=2000) * 0.1
    data = lightgbm.Dataset(x, y, categorical_feature=[0])
    params = {"objective": "regression", "verbosity": -1, "min_data_per_group": 5}
    text = lightgbm.train(params, data, 10).model_to_string()
    assert re.search(r"^num_cat=[1-9]", text, re.M)
    with pytest.raises(ValueError, match="categorical"):
        Forest.from_model_text(text)


@pytest.mark.parametrize(
    "garbage", ["", "tree", "tree\n", "hello\nworld", "tree\nend of trees\n", "\x00" * 64, "Tree=0"]
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(ValueError):
        Forest.from_model_text(garbage)


def test_corrupted_models_raise_or_score_never_crash(model_text: str) -> None:
    rng = np.random.default_rng(0)
    x = probe_rows(model_text, seed=9, n=50)
    alphabet = list("0123456789-=. \nTreabcxe+")
    refused = 0
    for _ in range(400):
        chars = list(model_text)
        for at in rng.integers(0, model_text.index("end of trees"), size=3):
            chars[at] = str(rng.choice(alphabet))
        try:
            forest = Forest.from_model_text("".join(chars))
        except ValueError:
            refused += 1
            continue
        assert forest.scores(x).shape == (50,)
    assert refused > 0


# ---- the compiled function on its own -------------------------------------------------


def flat(forest: Forest) -> list[np.ndarray]:
    return [np.array(array) for array in forest.arrays()]  # writable copies


def test_forest_scores_adds_to_out(model_text: str) -> None:
    forest = Forest.from_model_text(model_text)
    x = probe_rows(model_text, seed=10, n=20)
    out = np.full(20, 1.5)
    _scoring.forest_scores(x, *flat(forest), out)
    np.testing.assert_allclose(out, forest.scores(x) + 1.5, rtol=0, atol=1e-12)


def test_forest_scores_checks_its_arrays(model_text: str) -> None:
    forest = Forest.from_model_text(model_text)
    x = probe_rows(model_text, seed=11, n=10)
    out = np.zeros(10)

    def call(index: int, value: np.ndarray, features: np.ndarray = x) -> None:
        arrays = flat(forest)
        arrays[index] = value
        _scoring.forest_scores(features, *arrays, out)

    arrays = flat(forest)
    split, thresholds, types, left, right, leaves, nodes, leaf_offsets = arrays
    with pytest.raises(TypeError, match="features"):
        _scoring.forest_scores(x.astype(np.float64), *arrays, out)
    with pytest.raises(TypeError, match="features"):
        _scoring.forest_scores(x[:, ::2], *arrays, out)
    with pytest.raises(TypeError, match="out"):
        _scoring.forest_scores(x, *arrays, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="out has"):
        _scoring.forest_scores(x, *arrays, np.zeros(11))
    with pytest.raises(TypeError, match="threshold"):
        call(1, thresholds.astype(np.float32))
    with pytest.raises(TypeError, match="split_feature"):
        call(0, split.astype(np.int64))
    with pytest.raises(ValueError, match="feature"):
        call(0, split, features=x[:, :3].copy())
    with pytest.raises(ValueError, match="threshold has"):
        call(1, thresholds[:-1])
    with pytest.raises(ValueError, match="offset"):
        call(6, nodes[:-1])
    bad = nodes.copy()
    bad[1], bad[2] = bad[2], bad[1]  # decreasing
    with pytest.raises(ValueError, match=r"decrease|leaves and"):
        call(6, bad)
    bad = left.copy()
    bad[0] = 0
    with pytest.raises(ValueError, match="child 0"):
        call(3, bad)
    bad = right.copy()
    bad[0] = -10_000
    with pytest.raises(ValueError, match="child -10000"):
        call(4, bad)
    bad = types.copy()
    bad[0] |= 1
    with pytest.raises(ValueError, match=r"categorical|numerical"):
        call(2, bad)
    bad = split.copy()
    bad[0] = -1
    with pytest.raises(ValueError, match="feature -1"):
        call(0, bad)
    with pytest.raises(ValueError, match="leaf"):
        call(5, leaves[:-1])
    bad = nodes.copy()
    bad[1] = nodes[-1] + 1000  # past the arrays, then back: refused before any is read
    with pytest.raises(ValueError, match="decrease"):
        call(6, bad)
    del leaf_offsets


def test_forest_scores_needs_a_writable_out(model_text: str) -> None:
    forest = Forest.from_model_text(model_text)
    x = probe_rows(model_text, seed=12, n=4)
    out = np.zeros(4)
    out.flags.writeable = False
    with pytest.raises(TypeError, match="out"):
        _scoring.forest_scores(x, *flat(forest), out)
    with pytest.raises(TypeError, match="out"):
        _scoring.PackedForest(*flat(forest), N_FEATURES).scores(x, out)


def test_packed_forest_checks_once_and_scores_as_forest_scores(model_text: str) -> None:
    forest = Forest.from_model_text(model_text)
    x = probe_rows(model_text, seed=13, n=33)
    packed = _scoring.PackedForest(*flat(forest), N_FEATURES)
    got, want = np.zeros(33), np.zeros(33)
    packed.scores(x, got)
    _scoring.forest_scores(x, *flat(forest), want)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="22"):
        packed.scores(x[:, :21].copy(), got)
    with pytest.raises(ValueError, match="out has"):
        packed.scores(x, np.zeros(3))
    with pytest.raises(TypeError, match="features"):
        packed.scores(x.astype(np.float64), got)
    arrays = flat(forest)
    arrays[3][0] = 0  # the root its own child
    with pytest.raises(ValueError, match="child 0"):
        _scoring.PackedForest(*arrays, N_FEATURES)
    with pytest.raises(ValueError, match="feature"):
        _scoring.PackedForest(*flat(forest), 3)
    with pytest.raises(ValueError, match="negative"):
        _scoring.PackedForest(*flat(forest), -1)
    with pytest.raises(RuntimeError, match="not initialised"):
        _scoring.PackedForest.__new__(_scoring.PackedForest).scores(x, got)
    with pytest.raises(RuntimeError, match="once"):
        packed.__init__(*flat(forest), N_FEATURES)  # type: ignore[misc]


# ---- cost ---------------------------------------------------------------------------


def test_timing_300_rows_150_trees(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints LightGBM's predict against Forest.scores on a request's worth of rows; asserts
    only that they agree."""
    booster = train("lambdarank", 9, rounds=150, num_leaves=31, max_depth=-1)
    text = booster.model_to_string()
    forest = Forest.from_model_text(text)
    assert forest.n_trees == 150
    x = probe_rows(text, seed=13, n=300)

    def best_of(call: Any, repeat: int = 200) -> float:
        call()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e6

    lgb = best_of(lambda: booster.predict(x, raw_score=True, num_threads=1))
    ours = best_of(lambda: forest.scores(x))
    one_lgb = best_of(lambda: booster.predict(x[:1], raw_score=True, num_threads=1))
    one_ours = best_of(lambda: forest.scores(x[:1]))
    np.testing.assert_array_equal(forest.scores(x), booster.predict(x, raw_score=True))
    with capsys.disabled():
        print(
            f"\n300 rows x {N_FEATURES} features, 150 trees of 31 leaves (median µs): "
            f"LightGBM predict {lgb:.0f}, Forest.scores {ours:.0f}; "
            f"1 row: {one_lgb:.0f} against {one_ours:.0f}"
        )
