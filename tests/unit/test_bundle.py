import asyncio
import json

import numpy as np
import pytest
from helpers import tiny_bundle_arrays

from recsvc.bundle import load_bundle, resolve, write_bundle
from recsvc.exceptions import BundleError
from recsvc.metrics import Metrics
from recsvc.reloader import BundleReloader


def arrays(n: int = 4) -> dict[str, np.ndarray]:
    return {
        "item_ids": np.array([f"i{k}" for k in range(n)]),
        "item_category": np.zeros(n, dtype=np.int32),
        "item_popularity": np.arange(n, dtype=np.int64),
        "item_first_seen": np.zeros(n),
        "pools": np.full((n, 3), -1, dtype=np.int32),
        "pool_sources": np.zeros((n, 3), dtype=np.uint8),
        "models/personalized/position_weights": np.ones(8, dtype=np.float32),
    }


def test_round_trip_and_current_link(tmp_path):
    first = write_bundle(tmp_path, arrays(), {"parameters": {"seed": 1}})
    second = write_bundle(tmp_path, arrays(), {"parameters": {"seed": 2}})
    assert resolve(tmp_path) == second.resolve()
    bundle = load_bundle(tmp_path)
    assert bundle.version == second.name and bundle.manifest["parameters"]["seed"] == 2
    assert bundle["item_ids"].tolist() == ["i0", "i1", "i2", "i3"]
    assert bundle.item_index()["i2"] == 2
    assert isinstance(bundle["pools"], np.memmap)
    assert load_bundle(first).manifest["parameters"]["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_corrupted_file_is_refused(tmp_path):
    path = write_bundle(tmp_path, arrays(), {})
    target = path / "pools.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"pools.npy does not match its sha256"):
        load_bundle(path)


def test_arrays_the_server_reads_in_place_must_have_its_types(tmp_path):
    wide = arrays()
    wide["pools"] = wide["pools"].astype(np.int64)
    with pytest.raises(BundleError, match="pools must be a C-ordered int32 array, got int64"):
        load_bundle(write_bundle(tmp_path / "a", wide, {}))
    doubles = arrays()
    doubles["models/personalized/position_weights"] = np.ones(8)
    with pytest.raises(BundleError, match="position_weights must be a C-ordered float32"):
        load_bundle(write_bundle(tmp_path / "b", doubles, {}))
    path = write_bundle(tmp_path / "c", arrays(), {})  # it writes C order; another tool may not
    np.save(path / "pool_sources.npy", np.asfortranarray(np.zeros((4, 3), dtype=np.uint8)))
    with pytest.raises(BundleError, match=r"pool_sources must .* uint8 array, got uint8 \(not C"):
        load_bundle(path, verify=False)


def test_mismatched_shapes_and_missing_files_are_refused(tmp_path):
    bad = arrays()
    bad["pool_sources"] = np.zeros((3, 3), dtype=np.uint8)
    with pytest.raises(BundleError, match="pool_sources has 3 rows, expected 4"):
        load_bundle(write_bundle(tmp_path / "a", bad, {}))
    narrow = arrays()
    narrow["pool_scores/itemcf"] = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(BundleError, match=r"pool_scores/itemcf has shape \(4, 2\), pools \(4, 3\)"):
        load_bundle(write_bundle(tmp_path / "c", narrow, {}))
    uneven = arrays()
    uneven["eval/users"], uneven["eval/items"] = np.zeros(3, np.int32), np.zeros(2, np.int32)
    with pytest.raises(BundleError, match="eval arrays differ in length"):
        load_bundle(write_bundle(tmp_path / "d", uneven, {}))
    path = write_bundle(tmp_path / "b", arrays(), {})
    (path / "models/personalized/position_weights.npy").unlink()
    with pytest.raises(BundleError, match=r"position_weights\.npy is missing"):
        load_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "something-else"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 'something-else'"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no bundle at"):
        load_bundle(tmp_path / "nowhere")


def test_object_arrays_cannot_be_written(tmp_path):
    bad = arrays()
    bad["item_ids"] = np.array([object()] * 4)
    with pytest.raises(BundleError, match="dtype object"):
        write_bundle(tmp_path, bad, {})
    assert list(tmp_path.iterdir()) == []


def nan_weights(arrays: dict[str, np.ndarray]) -> None:
    arrays["models/personalized/position_weights"][:] = np.nan


def inf_embedding(arrays: dict[str, np.ndarray]) -> None:
    arrays["models/personalized/input_embeddings"][2, 1] = np.inf


def huge_embeddings(arrays: dict[str, np.ndarray]) -> None:
    arrays["models/personalized/output_embeddings"][0, 0] = 3e37  # finite; its scores are not


def flagged_padding(arrays: dict[str, np.ndarray]) -> None:
    arrays["pool_sources"][3, 2] = 1  # pools[3, 2] is -1


def unflagged_candidate(arrays: dict[str, np.ndarray]) -> None:
    arrays["pool_sources"][0, 1] = 0


def unknown_flag(arrays: dict[str, np.ndarray]) -> None:
    arrays["pool_sources"][0, 0] = 1 << 7


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (nan_weights, "position_weights holds NaN or infinite values"),
        (inf_embedding, "input_embeddings holds NaN or infinite values"),
        (huge_embeddings, "scores could overflow"),
        (flagged_padding, "flags empty"),
        (unflagged_candidate, "has no source flag"),
        (unknown_flag, "flags no source is assigned"),
    ],
)
def test_values_a_checksum_cannot_catch_are_refused(tmp_path, spoil, message) -> None:
    """Each bundle has a manifest whose sha256s match: it was written that way."""
    good = tiny_bundle_arrays()
    load_bundle(write_bundle(tmp_path / "good", good, {}))
    spoiled = {name: array.copy() for name, array in good.items()}
    spoil(spoiled)
    with pytest.raises(BundleError, match=message):
        load_bundle(write_bundle(tmp_path / "spoiled", spoiled, {}))


def test_a_served_bundle_is_not_swapped_for_one_with_nan_weights(tiny_bundle) -> None:
    reloader = BundleReloader(tiny_bundle, "personalized", Metrics())
    first = reloader.ranker.version
    spoiled = tiny_bundle_arrays()
    nan_weights(spoiled)
    write_bundle(tiny_bundle, spoiled, {})
    assert not asyncio.run(reloader.reload())
    assert reloader.ranker.version == first
    assert (
        reloader.metrics.bundle_swaps.labels(result="failed", variant="default")._value.get() == 1
    )


def test_a_failing_check_of_a_new_bundle_is_logged_and_the_bundle_served(
    tiny_bundle, caplog: pytest.LogCaptureFixture
) -> None:
    checked = []

    def check(ranker) -> None:
        checked.append(ranker.version)
        raise KeyError("metrics")  # e.g. a manifest of an unexpected shape

    reloader = BundleReloader(tiny_bundle, "personalized", Metrics(), on_load=check)
    newer = write_bundle(tiny_bundle, tiny_bundle_arrays(), {}).name
    assert asyncio.run(reloader.reload())
    assert reloader.ranker.version == newer and checked[-1] == newer and len(checked) == 2
    assert [r.message for r in caplog.records].count("a check of the bundle failed") == 2
