import datetime as dt

import numpy as np
import pytest

from offline.data.dataset import (
    build_dataset,
    describe_split,
    fit_period_log,
    local_days,
    parse_timezone,
)
from offline.data.events import EventLog
from offline.data.interactions import CART, CLICK
from offline.data.skips import SkipReport
from recsvc.exceptions import ConfigError, DataError

DAY = 86400.0
# 2017-12-01 00:00 at UTC+8 is 2017-11-30 16:00 UTC.
START = dt.datetime(2017, 12, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()


def make_log(rows: list[tuple[str, str, str, int, float]]) -> EventLog:
    users, items, cats, types, ts = zip(*rows, strict=True)
    return EventLog.from_ids(
        np.array(users),
        np.array(items),
        np.array(types, dtype=np.int8),
        np.array(ts),
        np.array(cats),
        SkipReport("mem"),
    )


def test_timezones_parse_and_shift_days():
    assert parse_timezone("UTC") is dt.UTC
    assert parse_timezone("+08:00").utcoffset(None) == dt.timedelta(hours=8)
    assert parse_timezone("UTC-3").utcoffset(None) == dt.timedelta(hours=-3)
    assert str(parse_timezone("Asia/Shanghai")) == "Asia/Shanghai"
    with pytest.raises(ConfigError, match="unknown time zone"):
        parse_timezone("Mars/Olympus")
    # 17:00 UTC on Nov 30 is already Dec 1 in UTC+8.
    ts = np.array([START + 3600.0, START - 3600.0])
    assert (local_days(ts, parse_timezone("+08:00")) == [17501, 17500]).all()
    assert (local_days(ts, parse_timezone("Asia/Shanghai")) == [17501, 17500]).all()
    assert (local_days(ts, dt.UTC) == [17500, 17500]).all()


ROWS = [
    ("u1", "a", "c1", CLICK, START + 1),  # day 1: train
    ("u1", "b", "c1", CLICK, START + DAY + 5),  # day 2: validation
    ("u2", "a", "c1", CLICK, START + 2 * DAY + 9),  # day 3: test
    ("u2", "z", "c2", CART, START + 2 * DAY + 8),  # test, before the click above
    ("u1", "y", "c2", CLICK, START + 2 * DAY + 1),  # test; y is new on the test day
]


def test_split_by_day_holds_out_the_last_day_and_sorts_by_user_then_time():
    data = build_dataset(make_log(ROWS), timezone="+08:00")
    assert data.split["test"] == "2017-12-03"
    assert data.split["validation_day"] == "2017-12-02"
    assert data.split["events"] == {"train": 1, "validation": 1, "test": 3, "after_test_day": 0}
    cat = data.catalogue
    assert cat.item_ids.tolist() == ["a", "b", "y", "z"]
    assert cat.category_names[cat.item_category].tolist() == ["c1", "c1", "c2", "c2"]
    items = cat.item_ids[data.events.items].tolist()
    assert data.user_ids[data.events.users].tolist() == ["u1", "u1", "u1", "u2", "u2"]
    assert items == ["a", "b", "y", "z", "a"]
    assert data.is_holdout.tolist() == [False, False, True, True, True]
    assert len(data.fit) == 2 and len(data.holdout) == 3
    # y and z are in the catalogue from the start of the test period, in no held-out order.
    assert cat.first_seen.tolist()[2:] == [START + 2 * DAY + 1] * 2


def test_validation_holdout_leaves_the_test_day_out_entirely():
    data = build_dataset(make_log(ROWS), timezone="+08:00", holdout="validation")
    assert data.catalogue.item_ids.tolist() == ["a", "b"]
    assert data.is_holdout.tolist() == [False, True]


def test_separate_test_file_makes_the_same_span_at_the_end_of_train_validation():
    test = make_log(
        [
            ("u3", "b", "c1", CLICK, START + 3 * DAY),
            ("u3", "a", "c1", CLICK, START + 3 * DAY + 5 * 3600),
        ]
    )  # a test period of 5 hours
    train = make_log([*ROWS[:2], ("u2", "a", "c1", CLICK, START + DAY + 3 * 3600)])
    data = build_dataset(train, test, timezone="+08:00")
    # The last 5 hours of the training log (two events) validate; the first event trains.
    assert data.split["events"] == {"train": 1, "validation": 2, "test": 2, "after_test_day": 0}
    assert data.split["validation_day"] == "after 2017-12-01T22:00:00+08:00"
    assert data.holdout.users.tolist() == [data.user_ids.tolist().index("u3")] * 2


def test_explicit_test_day_drops_later_days_and_reports_them():
    data = build_dataset(make_log(ROWS), timezone="+08:00", test_day="2017-12-02")
    assert data.split["events"]["after_test_day"] == 3
    assert data.split["events"]["test"] == 1


def test_empty_holdout_is_a_clear_error():
    with pytest.raises(DataError, match="no events in the test period"):
        build_dataset(make_log(ROWS), timezone="+08:00", test_day="2017-12-09")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        build_dataset(make_log(ROWS), test_day="12/03/2017")


def test_the_split_line_says_what_is_fitted_on() -> None:
    split = {
        "timezone": "UTC",
        "holdout": "test",
        "validation_day": "after 2014-09-28T00:00:00+00:00",
        "test": "test file",
        "events": {"train": 53256, "validation": 17022, "test": 13568, "after_test_day": 0},
    }
    assert describe_split(split) == (
        "split (UTC): fit on 70,278 events (everything before the test period: 53,256 "
        "training and 17,022 validation events); held out: 13,568 events of the test "
        "period (test file)"
    )
    tuning = describe_split({**split, "holdout": "validation"})
    assert "fit on 53,256 training events; held out: 17,022 events" in tuning
    assert "the 13,568 test events are left out" in tuning


@pytest.mark.parametrize(
    "holdout, test_day", [("test", None), ("validation", None), ("test", "2017-12-02")]
)
def test_the_fit_period_log_is_what_the_dataset_fits_on(holdout: str, test_day: str | None):
    log = make_log(ROWS)
    data = build_dataset(log, timezone="+08:00", holdout=holdout, test_day=test_day)
    fit = fit_period_log(log, timezone="+08:00", holdout=holdout, test_day=test_day)
    assert sorted(fit.ts.tolist()) == sorted(data.events.ts[~data.is_holdout].tolist())


def test_the_fit_period_log_of_a_separate_test_file_never_holds_it():
    test = make_log([("u3", "b", "c1", CLICK, START + 3 * DAY)])
    train = make_log([*ROWS[:2], ("u2", "a", "c1", CLICK, START + DAY + 3 * 3600)])
    for holdout in ("test", "validation"):
        data = build_dataset(train, test, timezone="+08:00", holdout=holdout)
        fit = fit_period_log(train, test, timezone="+08:00", holdout=holdout)
        assert sorted(fit.ts.tolist()) == sorted(data.events.ts[~data.is_holdout].tolist())
