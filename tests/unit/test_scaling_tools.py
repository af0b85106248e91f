"""Per-stage peak memory, the scaling bench's helpers and the paper-scale bundle writer."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.scaling import label, markdown, parse_size, recorded
from offline.timings import Timings
from recsvc.bundle import load_bundle
from recsvc.ranking import Ranker

REPO = Path(__file__).resolve().parents[2]


PEAK_PROBE = """
import time
import numpy as np
from offline.peak_memory import PeakMemory
with PeakMemory() as before:
    pass
with PeakMemory(interval=0.01) as peak:
    block = np.ones(100 << 20, dtype=np.uint8)  # 100 MiB, touched
    time.sleep(0.1)  # a few sampling intervals: np.ones may hold the GIL while it fills
    del block
print(before.mib, peak.mib)
"""


def test_peak_memory_sees_an_allocation_that_is_freed_again():
    # In a fresh interpreter: inside the suite, earlier tests' child processes and garbage
    # move the baseline (CI runs saw +40 MiB for this 100 MiB block).
    probe = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    before, peak = map(float, probe.stdout.split())
    assert peak > before + 80


def test_pipeline_stages_record_seconds_and_peak_memory():
    timings = Timings()
    with timings.stage("load"):
        np.ones(50 << 20, dtype=np.uint8).sum()
    assert set(timings.seconds) == set(timings.peak_mib) == {"load"}
    assert timings.peak_mib["load"] > 50


@pytest.mark.parametrize(("text", "value"), [("1M", 1_000_000), ("250k", 250_000), ("4000", 4000)])
def test_sizes_parse_and_label_back(text, value):
    assert parse_size(text) == value
    assert parse_size(label(value)) == value


@pytest.mark.parametrize("text", ["lots", "10", "1.5X"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_markdown_has_a_row_per_stage_and_a_column_pair_per_size():
    result = {
        "users": 10,
        "items_in_bundle": 35,
        "csv_mib": 1.0,
        "stage_s": {"load": 1.0, "itemcf": 2.0},
        "stage_peak_mib": {"load": 100.0, "itemcf": 120.0},
        "pipeline_wall_s": 5.0,
        "pipeline_peak_mib": 130.0,
    }
    text = markdown([{**result, "events": 1_000_000}, {**result, "events": 4_000_000}])
    lines = text.splitlines()
    assert lines[0].count("MiB") == 2 and "4M s" in lines[0]
    assert any(line.startswith("| itemcf | 2.0 | 120.0 | 2.0 | 120.0") for line in lines)


def _bundle_memory_module(monkeypatch: pytest.MonkeyPatch):
    # loadtest/ is a folder of scripts run from the repository root, not an installed
    # package: load it by path, with the root on sys.path for its loadtest.* imports.
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root))
    path = root / "loadtest" / "bundle_memory.py"
    spec = importlib.util.spec_from_file_location("bundle_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_bundle_loads_verified_and_ranks(tmp_path, monkeypatch):
    version = _bundle_memory_module(monkeypatch).write_synthetic_bundle(
        tmp_path / "b", n_items=300, pool=20, dim=8, seed=1
    )
    bundle = load_bundle(version)  # checksums, shapes and per-item consistency
    assert bundle["pools"].shape == (300, 20)
    assert bundle["models/personalized/input_embeddings"].shape == (300, 8)
    ranking = Ranker(bundle).rank("7", k=5)
    assert len(ranking.items) == 5


def test_a_rerun_finds_the_runs_already_recorded_with_its_parameters(tmp_path):
    results = tmp_path / "results.jsonl"
    lines = [
        {"events": 1_000_000, "engine": "local", "params": ["a=1"], "wall": 1},
        {"events": 1_000_000, "params": ["a=1"], "wall": 2},  # before engines: local
        {"events": 1_000_000, "engine": "spark", "params": ["a=2"], "wall": 3},
        {"events": 4_000_000, "engine": "spark", "params": ["a=1"], "wall": 4},
    ]
    results.write_text(
        "\n".join(json.dumps(line) for line in lines) + '\n{"events": "4M", "params": ["a=1"]}\n'
        "a line cut by a kill"
    )
    found = recorded(results, ["a=1"])
    assert {key: r["wall"] for key, r in found.items()} == {
        (1_000_000, "local"): 2,  # the last line wins
        (4_000_000, "spark"): 4,
    }
    assert recorded(results, ["a=3"]) == {}
    assert recorded(tmp_path / "none.jsonl", ["a=1"]) == {}
