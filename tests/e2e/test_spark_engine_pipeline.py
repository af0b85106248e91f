"""``recsvc pipeline --engine spark`` builds the bundle the local engine builds.

The Spark run leaves out the second stage, whose training builds a first-stage bundle by
the same ``build_arrays`` (Spark's item-CF included) a second time: everything else must
be the local bundle's, array for array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import SMALL

from recsvc.bundle import load_bundle
from recsvc.cli import main


def test_the_spark_engine_writes_the_local_engines_bundle(
    taobao_slice: Path, taobao_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundles"
    args = ["pipeline", "--format", "taobao", "--events", str(taobao_slice), "--out", str(out)]
    engine = ["--engine", "spark", "--spark-master", "local[2]"]
    code = main([*args, *engine, *SMALL, "--param", "ranker.enabled=false"])
    assert code == 0
    local, spark = load_bundle(taobao_bundle), load_bundle(out)
    assert sorted(local.arrays) == sorted([*spark.arrays, "ranker/model"])
    for name in spark.arrays:
        a, b = np.asarray(local[name]), np.asarray(spark[name])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    assert local.manifest["split"] == spark.manifest["split"]
    assert local.manifest["source"] == spark.manifest["source"]
    assert local.manifest["metrics"] == {
        **spark.manifest["metrics"],
        "second_stage": local.manifest["metrics"]["second_stage"],
    }
    assert local.manifest["engine"] == {"name": "local"}
    assert spark.manifest["engine"]["name"] == "spark"
    assert spark.manifest["engine"]["master"] == "local[2]"


def test_spark_master_without_the_spark_engine_is_refused(
    taobao_slice: Path, tmp_path: Path, capsys
) -> None:
    args = ["pipeline", "--format", "taobao", "--events", str(taobao_slice), "--out",
            str(tmp_path / "b"), "--spark-master", "local[2]"]  # fmt: skip
    assert main(args) == 2
    assert "--spark-master is for --engine spark" in capsys.readouterr().err
