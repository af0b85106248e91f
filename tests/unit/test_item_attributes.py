"""Item categories from a catalogue file of their own (``--item-attributes``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from offline.cli import add_event_arguments
from offline.data.attributes import AttributeSpec, load_item_categories, with_categories
from offline.data.dataset import build_dataset
from offline.data.events import ColumnSpec, load_delimited
from offline.pipeline import attribute_spec
from recsvc.exceptions import ConfigError, DataError

T = 1511544000
EVENTS = [("u1", "i1", "c1"), ("u1", "i2", "c2"), ("u2", "i1", "c1"), ("u2", "i3", "c1"),
          ("u3", "i4", "c2")]  # fmt: skip


def test_the_catalogue_rows_are_kept_or_counted(tmp_path: Path) -> None:
    path = tmp_path / "items.tsv"
    path.write_text("sku\tname\tcat\ni1\tshirt\tc1\ni2\tsock\n\n\tnone\tc9\ni1\tagain\tc7\n"
                    " i3 \that\t c1 \n")  # fmt: skip
    categories, report = load_item_categories(AttributeSpec(path, "sku", "cat", "\t"))
    assert categories == {"i1": "c1", "i3": "c1"}  # the first row of an item wins
    assert (report.read, report.loaded) == (5, 2)
    assert report.examples == ["line 3: too few fields (2 < 3)", "line 5: empty item id",
                               "line 6: item listed again ('i1')"]  # fmt: skip
    with pytest.raises(DataError, match="'category' is not in the header"):
        load_item_categories(AttributeSpec(path, "sku", delimiter="\t"))


def test_events_get_their_items_categories_and_the_unlisted_are_counted(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("".join(f"{u},{i},{T + n * 86400}\n" for n, (u, i, _) in enumerate(EVENTS)))
    log = load_delimited(events, ColumnSpec(user=0, item=1, timestamp=2))
    assert log.categories is None
    tagged, unlisted = with_categories(log, {"i1": "c1", "i2": "c2", "i3": "c1", "i9": "c3"})
    assert unlisted == 1  # i4
    assert tagged.categories.tolist() == ["c1", "c2", "c1", "c1", ""]
    # The same dataset as a log whose rows carry the categories themselves.
    with_column = tmp_path / "with_column.csv"
    with_column.write_text(
        "".join(f"{u},{i},{T + n * 86400},{c if i != 'i4' else ''}\n" for n, (u, i, c) in
                enumerate(EVENTS))
    )  # fmt: skip
    direct = load_delimited(with_column, ColumnSpec(user=0, item=1, timestamp=2, category=3))
    a = build_dataset(tagged, None, timezone="UTC")
    b = build_dataset(direct, None, timezone="UTC")
    assert np.array_equal(a.catalogue.item_category, b.catalogue.item_category)
    assert np.array_equal(a.catalogue.category_names, b.catalogue.category_names)


@pytest.mark.parametrize("events_flags", [["--format", "taobao"],
                                          ["--format", "csv", "--category-col", "3"]])  # fmt: skip
def test_two_sources_of_categories_are_refused(events_flags: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_event_arguments(parser)
    args = parser.parse_args([*events_flags, "--events", "e.csv", "--item-attributes", "a.csv"])
    with pytest.raises(ConfigError, match="use one of them"):
        attribute_spec(args)
    args = parser.parse_args(["--format", "csv", "--events", "e.csv", "--item-attributes",
                              "a.tsv", "--attributes-delimiter", "tab"])  # fmt: skip
    assert attribute_spec(args) == AttributeSpec(Path("a.tsv"), "item_id", "category", "\t")
