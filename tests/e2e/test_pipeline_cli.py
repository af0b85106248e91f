"""End to end on a slice of the real Taobao log: ``recsvc pipeline`` then ``recsvc eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import NO_SECOND_STAGE, SMALL

from recsvc.bundle import load_bundle
from recsvc.cli import main
from recsvc.contract import SOURCE_BITS

pytestmark = pytest.mark.slow

METRICS = {"hr@5", "hr@10", "hr@20", "ndcg@10", "mrr@20", "coverage"}


def run_eval(bundles: Path, out: Path, capsys) -> tuple[dict, str]:
    code = main(
        ["eval", "--bundle", str(bundles), "--json", str(out / "eval.json"),
         "--plot", str(out / "eval.png")]
    )  # fmt: skip
    assert code == 0
    return json.loads((out / "eval.json").read_text()), capsys.readouterr().out


def test_pipeline_and_eval_on_real_data_are_complete_and_repeatable(
    taobao_slice: Path, taobao_bundle: Path, tmp_path: Path, capsys
):
    """The session's bundle (``recsvc pipeline`` on the slice with SMALL, seed 7), evaluated;
    then the same pipeline on Spark, which must give the same bundle, bit for bit (and so
    the same evaluation, which reads nothing else)."""
    first, printed = run_eval(taobao_bundle, tmp_path, capsys)
    assert "Click hit ratio (%)" in printed and "Add-to-cart hit ratio (%)" in printed
    assert "personalized - itemcf on click hr@10" in printed

    assert set(first) == {"cases", "conversion", "methods"} and first["conversion"] == "cart"
    assert first["cases"]["click"] > 100 and first["cases"]["cart"] > 0
    assert set(first["methods"]) == {
        "popular",
        "itemcf",
        "item2vec",
        "pss",
        "personalized",
        "personalized_cart",
        "sknn",
        "vsknn",
        "fallback",
        "served",
    }
    assert "personalized - vsknn on click hr@10" in printed
    for result in first["methods"].values():
        assert set(result) == {"click", "cart"}
        for subset in result.values():
            assert set(subset) == METRICS
            assert all(0.0 <= v <= 1.0 for v in subset.values())
            assert subset["hr@5"] <= subset["hr@10"] <= subset["hr@20"] <= subset["coverage"]
    assert (tmp_path / "eval.png").stat().st_size > 10_000

    bundle = load_bundle(taobao_bundle)
    pools = np.asarray(bundle["pools"])
    assert pools.shape == (bundle.n_items, 200)
    assert not (pools == np.arange(bundle.n_items)[:, None]).any()
    assert bundle.manifest["sources_ran"] == ["itemcf", "item2vec", "pss"]
    assert set(bundle.manifest["metrics"]["pss"]["verification"]) == {
        "view_to_purchase",
        "catalogue_labelled",
    }
    assert "image" in bundle.manifest["sources_skipped"]
    # No titles or images here: an item without behaviour is described by its category alone,
    # and PSS leaves it to the category rule, as neither query nor candidate.
    pss_known = np.asarray(bundle["embeddings/pss_known"])
    behaviour_known = np.asarray(bundle["embeddings/item2vec_known"])
    assert (~behaviour_known).any() and np.array_equal(pss_known, behaviour_known)
    from_pss = (np.asarray(bundle["pool_sources"]) & SOURCE_BITS["pss"]) > 0
    assert from_pss.any() and pss_known[pools[from_pss]].all()
    assert not from_pss[~pss_known].any()
    assert 0.0 < bundle.manifest["metrics"]["annoy"]["item2vec"]["recall"] <= 1.0
    assert bundle.manifest["source"]["files"][0]["skipped"] == {"too few fields": 1}

    # The same seed gives the same bundle, whichever engine builds it: this run's loading,
    # item-CF, pools and training rows are Spark's (offline/spark/). Evaluation reads nothing
    # but the bundle and the log, so the same bundle gives the same JSON.
    spark_root = tmp_path / "spark" / "bundles"
    code = main(
        ["pipeline", "--format", "taobao", "--events", str(taobao_slice), "--out",
         str(spark_root), *SMALL, "--engine", "spark", "--spark-master", "local[2]"]
    )  # fmt: skip
    assert code == 0
    assert "1 skipped (too few fields: 1); first: line " in capsys.readouterr().out
    on_spark = load_bundle(spark_root)
    assert sorted(on_spark.arrays) == sorted(bundle.arrays)
    for name in bundle.arrays:
        a, b = np.asarray(bundle[name]), np.asarray(on_spark[name])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    for part in ("split", "source", "parameters", "metrics"):
        assert on_spark.manifest[part] == bundle.manifest[part], part
    assert bundle.manifest["engine"] == {"name": "local"}
    assert on_spark.manifest["engine"]["name"] == "spark"
    assert on_spark.manifest["engine"]["master"] == "local[2]"


def test_bad_flags_and_inputs_fail_with_clear_messages(tmp_path: Path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("1,2,3,zz,4\n")
    assert (
        main(["pipeline", "--format", "csv", "--events", str(empty), "--out", str(tmp_path)]) == 2
    )
    assert "--format csv needs --user-col, --item-col, --time-col" in capsys.readouterr().err
    code = main(["pipeline", "--format", "taobao", "--events", str(empty), "--out", str(tmp_path)])
    assert code == 1
    assert "no usable events" in capsys.readouterr().err
    code = main(
        [
            "pipeline",
            "--format",
            "taobao",
            "--events",
            str(empty),
            "--out",
            str(tmp_path),
            "--param",
            "personalized.epochs=many",
        ]
    )
    assert code == 2
    assert "'many' is not a int" in capsys.readouterr().err
    assert main(["eval", "--bundle", str(tmp_path / "none"), "--json", str(tmp_path / "x")]) == 1
    assert "no bundle at" in capsys.readouterr().err
    spark_master = ["--spark-master", "local[2]"]
    args = ["pipeline", "--format", "taobao", "--events", str(empty), "--out", str(tmp_path)]
    assert main([*args, *spark_master]) == 2
    assert "--spark-master is for --engine spark" in capsys.readouterr().err


def test_item_images_become_the_image_source(
    taobao_slice: Path, shared: Path, tmp_path: Path, capsys
):
    """Four real photos named after catalogue items, embedded with the real MobileNet."""
    items = []
    for line in taobao_slice.read_text().splitlines()[:400]:
        item = line.split(",")[1]
        if item not in items:
            items.append(item)
    photos = sorted((shared / "models/sample_images").glob("*.*[gp]"))  # bmp and jpg
    assert len(photos) == 4
    folder = tmp_path / "images"
    folder.mkdir()
    for item, photo in zip(items, photos, strict=False):
        (folder / f"{item}{photo.suffix}").write_bytes(photo.read_bytes())
    (folder / f"not-an-item{photos[0].suffix}").write_bytes(photos[0].read_bytes())
    code = main(
        [
            "pipeline",
            "--format",
            "taobao",
            "--events",
            str(taobao_slice),
            "--out",
            str(tmp_path / "bundles"),
            "--item-images",
            str(folder),
            "--shared",
            str(shared),
            *SMALL,
            *NO_SECOND_STAGE,
        ]
    )
    assert code == 0
    bundle = load_bundle(tmp_path / "bundles")
    assert bundle.manifest["sources_ran"] == ["itemcf", "item2vec", "image", "pss"]
    assert "image" in bundle.manifest["metrics"]["pss"]["parts"]
    assert bundle.manifest["metrics"]["image_vectors"] == 4
    assert np.asarray(bundle["embeddings/image"]).shape == (bundle.n_items, 1024)
    index = bundle.item_index()
    scores = np.asarray(bundle["pool_scores/image"])[index[items[0]]]
    pool = np.asarray(bundle["pools"])[index[items[0]]]
    others = {index[i] for i in items[1:4]}
    # The other photographed items are in the first item's pool, with real cosines.
    assert others <= set(pool.tolist())
    assert np.isfinite(scores[np.isin(pool, list(others))]).all()
    assert (
        main(["eval", "--bundle", str(tmp_path / "bundles"), "--json", str(tmp_path / "eval.json")])
        == 0
    )
    assert "image" in json.loads((tmp_path / "eval.json").read_text())["methods"]
    assert "5 read, 4 loaded, 1 skipped (unknown item: 1)" in capsys.readouterr().out
