import numpy as np

from bench.ann_sweep import main, sweep
from recsvc.bundle import write_bundle


def test_sweep_reaches_exact_recall_with_an_exhaustive_search_k():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    known = np.ones(300, dtype=bool)
    known[:5] = False
    rows = sweep(embeddings, known, trees=[3], search_ks=[10, 10**6], k=20, sample=50, seed=0)
    assert [(r["trees"], r["search_k"]) for r in rows] == [(3, 10), (3, 10**6)]
    assert rows[1]["recall"] == 1.0
    assert rows[0]["recall"] < rows[1]["recall"]


def test_command_prints_a_table_and_reports_a_missing_embedding(tmp_path, capsys):
    n = 60
    arrays = {
        "item_ids": np.arange(n).astype(str),
        "item_category": np.zeros(n, np.int32),
        "item_popularity": np.ones(n, np.int64),
        "item_first_seen": np.zeros(n),
        "pools": np.full((n, 2), -1, np.int32),
        "pool_sources": np.zeros((n, 2), np.uint8),
        "embeddings/item2vec": np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32),
        "embeddings/item2vec_known": np.ones(n, dtype=bool),
    }
    write_bundle(tmp_path, arrays, {})
    assert main(["--bundle", str(tmp_path), "--trees", "2", "--search-k", "-1", "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | -1 |" in out and "recall@5 vs exact" in out
    assert main(["--bundle", str(tmp_path), "--embedding", "image"]) == 1
    assert "has no array 'embeddings/image'" in capsys.readouterr().err
