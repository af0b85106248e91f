"""A LightGBM forest scored in C: its text model parsed without LightGBM, its trees walked
by :class:`recsvc._scoring.PackedForest` (the arrays checked and packed once, at load).

:meth:`Forest.from_model_text` reads the format of ``Booster.model_to_string()``: the header
(``num_class``, ``objective``, ``feature_names``, ...), then one ``Tree=i`` block per tree
with its ``split_feature``, ``threshold``, ``decision_type``, ``left_child``, ``right_child``
and ``leaf_value``, then ``end of trees``. A tree's leaf values already hold its shrinkage
(LightGBM multiplies them in after growing the tree; ``shrinkage=`` only records it) and,
for the first tree, the initial score of ``boost_from_average``, so a row's raw score is the
plain sum of the leaves it reaches.

The trees are flattened into one set of node arrays and one leaf array, with per-tree
offsets into each; child indices stay as LightGBM writes them, local to their tree: ``c >=
0`` is node ``c``, ``c < 0`` leaf ``~c``. A split sends a row left when ``x <= threshold``,
and a missing value (NaN) as ``decision_type`` says: bit 1 (``& 2``) is "default left",
bits 2-3 (``(>> 2) & 3``) the missing type: None (NaN is taken as 0), Zero (0 and NaN take
the default side) or NaN (NaN takes it). Bit 0 marks a categorical split, which is refused:
the second stage's features are numerical.

:meth:`Forest.scores` gives the same doubles as ``Booster.predict(X, raw_score=True)``
(the same decisions, and each row's leaves summed in LightGBM's order). Anything malformed
raises ValueError: the parser checks the text and each tree's shape, and the compiled
PackedForest checks the arrays again (offsets, child and feature indices) before packing
them, so that no array can make a walk leave its tree.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

from recsvc import _scoring

#: LightGBM's decision_type bits (include/LightGBM/tree.h).
CATEGORICAL = 1
DEFAULT_LEFT = 2
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2

_INT = re.compile(r"-?[0-9]+")
_INT32 = (-(2**31), 2**31 - 1)
#: The flat arrays of a forest, in the order of :func:`recsvc._scoring.forest_scores`.
_Arrays = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]
_TREE_KEYS = ("split_feature", "threshold", "decision_type", "left_child", "right_child")


def _ints(key: str, value: str, where: str) -> NDArray[np.int64]:
    tokens = value.split()
    if not all(_INT.fullmatch(token) for token in tokens):
        raise ValueError(f"{where}: {key} is not a list of integers")
    values = [int(token) for token in tokens]
    if values and (min(values) < _INT32[0] or max(values) > _INT32[1]):
        raise ValueError(f"{where}: {key} has a value out of the int32 range")
    return np.array(values, dtype=np.int64)


def _floats(key: str, value: str, where: str) -> NDArray[np.float64]:
    tokens = value.split()
    try:
        if any("_" in token for token in tokens):
            raise ValueError
        return np.array([float(token) for token in tokens], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{where}: {key} is not a list of numbers") from None


def _int(key: str, fields: dict[str, str], where: str) -> int:
    if key not in fields:
        raise ValueError(f"{where}: no {key}=")
    value = fields[key].strip()
    if not _INT.fullmatch(value):
        raise ValueError(f"{where}: {key}={value!r} is not an integer")
    return int(value)


def _key_values(lines: list[str], where: str) -> tuple[dict[str, str], set[str]]:
    """``key=value`` lines as a dict, and bare ``key`` lines (LightGBM's flags) as a set."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    for line in lines:
        if not line:
            continue
        key, sep, value = line.partition("=")
        if key in fields or key in flags:
            raise ValueError(f"{where}: {key} appears twice")
        if sep:
            fields[key] = value
        else:
            flags.add(key)
    return fields, flags


class _Tree:
    """One tree's arrays, checked to be a binary tree LightGBM would write."""

    def __init__(self, index: int, fields: dict[str, str], n_features: int) -> None:
        where = f"tree {index}"
        n_leaves = _int("num_leaves", fields, where)
        if n_leaves < 1:
            raise ValueError(f"{where}: num_leaves={n_leaves}")
        if "num_cat" in fields and _int("num_cat", fields, where) != 0:
            raise ValueError(f"{where}: has categorical splits, which are not supported")
        if fields.get("is_linear", "0").strip() != "0":
            raise ValueError(f"{where}: is a linear tree, which is not supported")
        if "leaf_value" not in fields:
            raise ValueError(f"{where}: no leaf_value=")
        self.leaf_value = _floats("leaf_value", fields["leaf_value"], where)
        if len(self.leaf_value) != n_leaves:
            raise ValueError(
                f"{where}: leaf_value has {len(self.leaf_value)} values, num_leaves={n_leaves}"
            )
        n_nodes = n_leaves - 1
        arrays: dict[str, np.ndarray] = {}
        for key in _TREE_KEYS:
            if key not in fields:
                if n_nodes == 0:  # LightGBM writes them empty; accept them left out too
                    fields[key] = ""
                else:
                    raise ValueError(f"{where}: no {key}=")
            parse = _floats if key == "threshold" else _ints
            arrays[key] = parse(key, fields[key], where)
            if len(arrays[key]) != n_nodes:
                raise ValueError(
                    f"{where}: {key} has {len(arrays[key])} values for {n_nodes} nodes "
                    f"(num_leaves={n_leaves})"
                )
        self.split_feature = arrays["split_feature"]
        self.threshold = arrays["threshold"]
        self.decision_type = arrays["decision_type"]
        self.left_child = arrays["left_child"]
        self.right_child = arrays["right_child"]
        _check_tree(self, n_features, where)


def _check_tree(tree: _Tree, n_features: int, where: str) -> None:
    split, types = tree.split_feature, tree.decision_type
    n_nodes, n_leaves = len(split), len(tree.leaf_value)
    if n_nodes == 0:
        return  # a single leaf
    bad = np.flatnonzero((split < 0) | (split >= n_features))
    if len(bad):
        node = int(bad[0])
        raise ValueError(
            f"{where}: node {node} splits on feature {split[node]}, the model has {n_features}"
        )
    categorical = np.flatnonzero(types & CATEGORICAL)
    if len(categorical):
        raise ValueError(
            f"{where}: node {int(categorical[0])} is a categorical split, which is not "
            "supported (only numerical features)"
        )
    bad = np.flatnonzero((types < 0) | (types > 0xF) | (((types >> 2) & 3) == 3))
    if len(bad):
        raise ValueError(f"{where}: node {int(bad[0])} has decision_type {types[bad[0]]}")
    # Every node but the root, and every leaf, is the child of exactly one node, and a
    # node's children come after it: a tree, whose every walk ends at a leaf.
    parents = np.concatenate([np.arange(n_nodes), np.arange(n_nodes)])
    children = np.concatenate([tree.left_child, tree.right_child])
    nodes, leaves = children >= 0, children < 0
    if np.any(children[nodes] <= parents[nodes]) or np.any(children[nodes] >= n_nodes):
        raise ValueError(f"{where}: a child index is out of range of its {n_nodes} nodes")
    leaf_of = ~children[leaves]
    if np.any(leaf_of >= n_leaves):
        raise ValueError(f"{where}: a leaf index is out of range of its {n_leaves} leaves")
    node_uses = np.bincount(children[nodes], minlength=n_nodes)
    leaf_uses = np.bincount(leaf_of, minlength=n_leaves)
    if np.any(node_uses[1:] != 1) or np.any(leaf_uses != 1):
        raise ValueError(f"{where}: the child indices do not form a binary tree")


def _readonly(array: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=dtype)
    out.flags.writeable = False
    return out


class Forest:
    """A LightGBM model's trees as flat arrays; ``scores`` is safe from any thread.

    ``split_feature``, ``threshold``, ``decision_type``, ``left_child`` and ``right_child``
    have one entry per internal node of all trees, tree after tree (int32, float64, int32,
    int32, int32); ``leaf_value`` (float64) one per leaf. Tree ``t`` has nodes
    ``tree_node_offset[t]:tree_node_offset[t + 1]`` and leaves
    ``tree_leaf_offset[t]:tree_leaf_offset[t + 1]`` (int32, one more entry than trees);
    its child indices are local to it (``c >= 0`` node ``c``, ``c < 0`` leaf ``~c``).
    """

    def __init__(
        self,
        feature_names: tuple[str, ...],
        objective: str,
        trees: list[_Tree],
    ) -> None:
        self.feature_names = feature_names
        self.objective = objective
        self.n_trees = len(trees)
        nodes = np.cumsum([0] + [len(tree.split_feature) for tree in trees])
        leaves = np.cumsum([0] + [len(tree.leaf_value) for tree in trees])
        if nodes[-1] > _INT32[1] or leaves[-1] > _INT32[1]:
            raise ValueError("the model has more nodes than int32 offsets can address")

        def joined(name: str, dtype: type[np.generic]) -> np.ndarray:
            parts = [getattr(tree, name) for tree in trees]
            return _readonly(np.concatenate(parts) if parts else np.zeros(0), dtype)

        self.split_feature = joined("split_feature", np.int32)
        self.threshold = joined("threshold", np.float64)
        self.decision_type = joined("decision_type", np.int32)
        self.left_child = joined("left_child", np.int32)
        self.right_child = joined("right_child", np.int32)
        self.leaf_value = joined("leaf_value", np.float64)
        self.tree_node_offset = _readonly(nodes, np.int32)
        self.tree_leaf_offset = _readonly(leaves, np.int32)
        # Checked and packed once: a call to scores then only walks the trees.
        self._packed = _scoring.PackedForest(*self.arrays(), len(feature_names))

    def arrays(self) -> _Arrays:
        """The flat arrays, in the order of :func:`recsvc._scoring.forest_scores`."""
        return (
            self.split_feature,
            self.threshold,
            self.decision_type,
            self.left_child,
            self.right_child,
            self.leaf_value,
            self.tree_node_offset,
            self.tree_leaf_offset,
        )

    @classmethod
    def from_model_text(cls, text: str) -> Forest:
        """The forest of a LightGBM text model (``Booster.model_to_string()``).

        Raises
        ------
        ValueError
            The text is not a complete LightGBM model, or has a tree that this module
            cannot score exactly as LightGBM: categorical or linear trees, several classes,
            or an averaged (random forest) output.
        """
        if not isinstance(text, str):
            raise ValueError(f"a LightGBM model is text, not {type(text).__name__}")
        lines = [line.rstrip("\r") for line in text.split("\n")]
        if not lines or lines[0] != "tree":
            raise ValueError("the model does not start with LightGBM's 'tree' header")
        try:
            end = lines.index("end of trees")
        except ValueError:
            raise ValueError("the model is incomplete: no 'end of trees' line") from None
        if "end of parameters" not in lines[end:]:  # as model_to_string always ends
            raise ValueError("the model is incomplete: no 'end of parameters' line")
        starts = [i for i in range(end) if lines[i].startswith("Tree=")]
        header, flags = _key_values(lines[1 : starts[0] if starts else end], "header")
        if "average_output" in flags:
            raise ValueError("the model averages its trees (random forest): not supported")
        for key in ("num_class", "num_tree_per_iteration"):
            if _int(key, header, "header") != 1:
                raise ValueError(f"the model has {key}={header[key]}: only 1 is supported")
        n_features = _int("max_feature_idx", header, "header") + 1
        names = tuple(header.get("feature_names", "").split())
        if "feature_names" not in header or len(names) != n_features:
            raise ValueError(
                f"the model has {len(names)} feature_names for max_feature_idx={n_features - 1}"
            )
        if "objective" not in header:
            raise ValueError("header: no objective=")
        trees = []
        for index, (start, stop) in enumerate(zip(starts, [*starts[1:], end], strict=True)):
            if lines[start] != f"Tree={index}":
                raise ValueError(f"expected 'Tree={index}', found {lines[start][:40]!r}")
            fields, extra = _key_values(lines[start + 1 : stop], f"tree {index}")
            if extra:
                raise ValueError(f"tree {index}: unexpected line {sorted(extra)[0][:40]!r}")
            trees.append(_Tree(index, fields, n_features))
        if "tree_sizes" in header and len(header["tree_sizes"].split()) != len(trees):
            raise ValueError(
                f"the model has {len(trees)} trees, its tree_sizes "
                f"{len(header['tree_sizes'].split())}"
            )
        return cls(names, header["objective"].strip(), trees)

    def scores(self, features: np.ndarray) -> NDArray[np.float64]:
        """Float64 raw scores of the rows of ``features`` (float32, one column per
        feature name, NaN missing): ``Booster.predict(features, raw_score=True)``."""
        if features.dtype != np.float32:
            raise TypeError(f"features must be float32, got {features.dtype}")
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(
                f"features has shape {features.shape}, the model {len(self.feature_names)} features"
            )
        out = np.zeros(features.shape[0], dtype=np.float64)
        self._packed.scores(np.ascontiguousarray(features), out)
        return out
