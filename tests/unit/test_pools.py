import numpy as np

from offline.data.interactions import Catalogue
from offline.pools import Pools, category_fill, merge_pools, newest_fill, order_pools
from offline.sources.base import Neighbours
from recsvc.contract import SOURCE_BITS

CF, I2V, CAT, NEW = (SOURCE_BITS[n] for n in ("itemcf", "item2vec", "category", "new"))


def source_names(flags: int) -> list[str]:
    return [name for name, bit in SOURCE_BITS.items() if flags & bit]


def neighbours(rows: list[list[int]]) -> Neighbours:
    items = np.array(rows, dtype=np.int32)
    return Neighbours(items, np.where(items >= 0, 1.0, np.nan).astype(np.float32))


# Items 0-5: categories x x x y y (item 5 unknown); 4 and 5 are the newest, no clicks yet.
# The newest-items rule below keeps size + 1 = 2 items: 4 and 5.
CATALOGUE = Catalogue(
    item_ids=np.array(list("abcdef")),
    item_category=np.array([0, 0, 0, 1, 1, -1], dtype=np.int32),
    category_names=np.array(["x", "y"]),
    first_seen=np.array([1.0, 2.0, 3.0, 4.0, 6.0, 5.0]),
)
POPULARITY = np.array([9, 1, 5, 3, 0, 0])


def test_category_fill_ranks_same_category_by_popularity():
    fill = category_fill(CATALOGUE, POPULARITY, size=2)
    assert fill.items.tolist() == [
        [0, 2, 1],
        [0, 2, 1],
        [0, 2, 1],  # x by popularity 9, 5, 1
        [3, 4, -1],
        [3, 4, -1],  # y: 3 (pop 3), then 4 (new)
        [-1, -1, -1],  # unknown category gets no same-category rule
    ]


def test_newest_fill_is_the_most_recent_first_seen_items():
    assert newest_fill(CATALOGUE, size=2).items[0].tolist() == [4, 5, 3]


def test_weighted_interleave_dedup_self_exclusion_and_source_tags():
    # itemcf (weight 2) takes two places for each item2vec place; item 0 proposes itself.
    cf = neighbours([[1, 2, 3], [0, -1, -1], [-1, -1, -1], [-1, -1, -1], [-1] * 3, [-1] * 3])
    i2v = neighbours([[0, 4, 2], [2, 3, 4], [-1, -1, -1], [-1, -1, -1], [-1] * 3, [-1] * 3])
    pools = merge_pools(
        {"itemcf": cf, "item2vec": i2v},
        {"itemcf": 2.0, "item2vec": 1.0},
        {"category": category_fill(CATALOGUE, POPULARITY, 4), "new": newest_fill(CATALOGUE, 1)},
        size=4,
    )
    # Row 0 keys: cf 1 -> 0.5, cf 2 -> 1.0, i2v 0 (self, dropped), cf 3 -> 1.5, i2v 4 -> 2.0.
    assert pools.items[0].tolist() == [1, 2, 3, 4]
    assert pools.sources[0, 0] == CF  # also in category x, but rules tag only what they add
    assert pools.sources[0, 1] == CF | I2V  # item 2 from both sources
    assert pools.sources[0, 2] == CF  # item 3 is in category y
    assert pools.sources[0, 3] == I2V
    # Row 1: cf 0 (0.5), i2v 2 (1.0), i2v 3 (2.0), i2v 4 (3.0).
    assert pools.items[1].tolist() == [0, 2, 3, 4]
    # Row 2 has no source candidates: category x first (0, then 1), then the newest (4, 5).
    assert pools.items[2].tolist() == [0, 1, 4, 5]
    assert pools.sources[2].tolist() == [CAT, CAT, NEW, NEW]
    # Row 4 is a new item with no behaviour: still gets a pool, and is reachable from others.
    assert pools.items[4].tolist() == [3, 5, -1, -1]
    assert (pools.items == np.arange(6)[:, None]).sum() == 0
    assert source_names(int(pools.sources[0, 1])) == ["itemcf", "item2vec"]


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(0)
    n = 50
    a = neighbours(rng.integers(-1, n, size=(n, 8)).tolist())
    b = neighbours(rng.integers(-1, n, size=(n, 8)).tolist())
    catalogue = Catalogue(
        np.arange(n).astype(str),
        rng.integers(0, 3, n).astype(np.int32),
        np.array(["p", "q", "r"]),
        rng.random(n),
    )
    rules = {
        "category": category_fill(catalogue, rng.integers(0, 9, n), 10),
        "new": newest_fill(catalogue, 10),
    }
    one = merge_pools({"itemcf": a, "item2vec": b}, {"itemcf": 1, "item2vec": 1}, rules, 10)
    many = merge_pools(
        {"itemcf": a, "item2vec": b}, {"itemcf": 1, "item2vec": 1}, rules, 10, chunk_rows=7
    )
    assert (one.items == many.items).all() and (one.sources == many.sources).all()
    assert (one.items >= 0).all()  # 50 items are enough to fill every pool of 10
    for row in one.items:
        assert len(set(row.tolist())) == len(row)


def test_a_source_quota_leaves_room_for_the_rules():
    # Item 0's only source proposes 3, 4, 5; capped at one candidate, the same-category rule
    # (popular x items: 2, 1) fills the rest of a pool of three.
    source = neighbours([[3, 4, 5], [-1] * 3, [-1] * 3, [-1] * 3, [-1] * 3, [-1] * 3])
    rules = {"category": category_fill(CATALOGUE, POPULARITY, size=3)}
    capped = merge_pools({"itemcf": source.head(1)}, {"itemcf": 1.0}, rules, size=3)
    assert capped.items[0].tolist() == [3, 2, 1]
    assert [source_names(int(f)) for f in capped.sources[0]] == [
        ["itemcf"],
        ["category"],
        ["category"],
    ]


def test_pools_are_stored_in_one_sources_order_with_unscored_candidates_after() -> None:
    pools = Pools(
        np.array([[4, 5, 6, -1]], dtype=np.int32), np.array([[CF, I2V, CF, 0]], dtype=np.uint8)
    )
    scores = {
        "itemcf": np.array([[0.2, np.nan, 0.9, np.nan]], dtype=np.float32),
        "item2vec": np.array([[0.1, 0.5, 0.3, np.nan]], dtype=np.float32),
    }
    ordered, moved = order_pools(pools, scores, "itemcf")
    assert ordered.items.tolist() == [[6, 4, 5, -1]]
    assert ordered.sources.tolist() == [[CF, CF, I2V, 0]]
    np.testing.assert_array_equal(moved["item2vec"], np.float32([[0.3, 0.1, 0.5, np.nan]]))
