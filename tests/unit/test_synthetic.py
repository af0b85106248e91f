"""The synthetic Taobao-format log generator and its realism statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.synthetic_realism import log_stats
from offline.data import synthetic
from offline.data.events import load_taobao
from offline.data.interactions import BUY, CART, CLICK, FAV
from offline.data.synthetic import (
    DAY,
    START_TS,
    SyntheticSpec,
    build_catalogue,
    iter_chunks,
    write_log,
)
from recsvc.exceptions import ConfigError

SPEC = SyntheticSpec(events=40_000, users=400, items=4_000, categories=40, days=8, seed=3)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "log.csv"
    write_log(SPEC, path, progress=False)
    return path


@pytest.fixture(scope="module")
def log(log_file: Path):
    return load_taobao(log_file)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, log_file):
    again, other = tmp_path / "again.csv", tmp_path / "other.csv"
    write_log(SPEC, again, progress=False)
    write_log(SyntheticSpec(**{**SPEC.__dict__, "seed": 4}), other, progress=False)
    assert again.read_bytes() == log_file.read_bytes()
    assert other.read_bytes() != log_file.read_bytes()


def test_the_project_taobao_loader_reads_every_row(log):
    assert len(log) == SPEC.events
    assert log.report.loaded == SPEC.events and not log.report.skipped
    assert len(np.unique(log.user_ids)) == SPEC.users
    assert set(np.unique(log.types)) == {CLICK, CART, FAV, BUY}
    assert log.ts.min() >= START_TS and log.ts.max() < START_TS + SPEC.days * DAY
    # Every item has exactly one category.
    pairs = np.unique(np.char.add(np.char.add(log.item_ids, "|"), log.categories))
    assert len(pairs) == len(np.unique(log.item_ids))


def test_each_user_is_contiguous_and_in_time_order(log):
    users = log.user_ids.astype(np.int64)
    assert (np.diff(users) >= 0).all()
    same = users[1:] == users[:-1]
    assert (np.diff(log.ts)[same] >= 0).all()


def test_item_popularity_and_category_sizes_are_heavy_tailed(log):
    stats = log_stats(log)
    assert stats["top1pct_item_share"] > 0.08  # 8x the share of a flat catalogue
    sizes = build_catalogue(SPEC).size
    assert sizes.max() > 5 * np.median(sizes)


def test_rates_are_near_the_configured_ones(log):
    stats = log_stats(log)
    for name in ("cart", "fav", "buy"):
        configured = getattr(SPEC, f"{name}_rate")
        assert configured * 0.8 < stats[f"{name}_per_click"] < configured * 1.2
    # Re-views happen at about the configured rate plus chance collisions, not far above.
    assert SPEC.repeat_rate * 0.8 < stats["repeat_view_rate"] < SPEC.repeat_rate + 0.2


def test_sessions_stay_in_a_category_far_more_than_chance(log):
    stats = log_stats(log)
    _, cats = np.unique(log.categories, return_inverse=True)
    share = np.bincount(cats) / len(cats)
    chance = float((share**2).sum())
    assert stats["same_category_next_click"] > 2 * chance


def test_carts_and_buys_follow_a_click_of_the_same_item(log):
    users = log.user_ids
    for i in np.flatnonzero(log.types != CLICK)[:200]:
        assert users[i - 1] == users[i]
        before = np.flatnonzero((log.types[:i] == CLICK) & (users[:i] == users[i]))
        assert log.item_ids[before[-1]] == log.item_ids[i]


def test_no_item_is_seen_before_its_first_day_and_some_arrive_later(log):
    cat = build_catalogue(SPEC)
    internal = np.empty(SPEC.items, dtype=np.int64)
    internal[cat.item_ids - 1] = np.arange(SPEC.items)
    items = internal[log.item_ids.astype(np.int64) - 1]
    day = (log.ts.astype(np.int64) - START_TS) // DAY
    assert (cat.first_day[items] <= day).all()
    assert (cat.first_day[np.unique(items)] > 0).sum() > 0.05 * len(np.unique(items))


def test_chunks_stream_whole_users_of_bounded_size():
    spec = SyntheticSpec(**{**SPEC.__dict__, "chunk_events": 2_000})
    sizes, last_user, total = [], -1, 0
    biggest_user = int(synthetic.user_event_counts(spec).max())
    for chunk in iter_chunks(spec, synthetic.build_catalogue(spec)):
        sizes.append(len(chunk))
        assert chunk.users[0] > last_user  # no user split across chunks
        last_user = int(chunk.users[-1])
        total += len(chunk)
    assert total == spec.events
    assert len(sizes) >= spec.events // (2_000 + biggest_user)
    assert max(sizes) <= 2_000 + biggest_user


def test_write_log_writes_chunk_by_chunk(tmp_path, monkeypatch):
    written: list[int] = []
    real = synthetic.format_chunk

    def spy(chunk, cat):
        written.append(len(chunk))
        return real(chunk, cat)

    monkeypatch.setattr(synthetic, "format_chunk", spy)
    spec = SyntheticSpec(**{**SPEC.__dict__, "events": 10_000, "chunk_events": 1_000})
    write_log(spec, tmp_path / "x.csv", progress=False)
    assert sum(written) == 10_000 and len(written) >= 5
    assert max(written) < 10_000


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "log.csv"
    write_log(SyntheticSpec(events=500, users=5, items=50, categories=5), out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"users": 50_000}, "cannot exceed --events"),
        ({"categories": 5_000}, "cannot exceed --items"),
        ({"cart_rate": 1.5}, "--cart-rate"),
        ({"days": 0}, "--days"),
        ({"repeat_rate": 0.6, "jump_rate": 0.6}, "<= 1"),
    ],
)
def test_bad_specs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticSpec(**{**SPEC.__dict__, **changes})


def test_cli_reports_bad_flags_without_traceback(tmp_path, capsys):
    code = synthetic.main(["--events", "100", "--users", "500", "--out", str(tmp_path / "a")])
    assert code == 2
    assert "cannot exceed --events" in capsys.readouterr().err
    missing = tmp_path / "nope" / "a.csv"
    assert synthetic.main(["--events", "100", "--out", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_defaults_keep_the_paper_ratios(tmp_path, capsys):
    out = tmp_path / "a.csv"
    assert synthetic.main(["--events", "20000", "--out", str(out)]) == 0
    assert "200 users, 70 items" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 20_000


def test_realism_statistics_on_a_known_log(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text(  # times 100 s apart, in 2017
        "1,10,5,pv,1511544100\n1,11,5,pv,1511544200\n1,10,5,pv,1511544300\n"
        "1,10,5,cart,1511544310\n2,12,6,pv,1511544100\n"
    )
    stats = log_stats(load_taobao(path))
    assert stats["events_per_user_mean"] == 2.5
    assert stats["repeat_view_rate"] == pytest.approx(1 / 4)
    assert stats["cart_per_click"] == pytest.approx(1 / 4)
    assert stats["items_per_category_median"] == 1.5
    assert stats["same_category_next_click"] == 1.0
    assert stats["distinct_items_per_user_mean"] == 1.5
