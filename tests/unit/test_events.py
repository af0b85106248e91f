from pathlib import Path

import numpy as np
import pytest

from offline.data.events import ColumnSpec, load_delimited, load_taobao
from offline.data.interactions import CART, CLICK
from recsvc.exceptions import DataError


def write(tmp_path: Path, text: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_taobao_rows_and_bad_rows_are_counted_by_reason(tmp_path):
    path = write(
        tmp_path,
        "1,10,5,pv,1511544070\n"
        "1,11,5,cart,1511544080\n"
        "2,10,5,like,1511544090\n"
        "2,12,6,pv,soon\n"
        "2,12,6,pv,-3\n"
        "2,12,6,pv,1511544090000\n"
        ",12,6,pv,1511544095\n"
        "3,13,7,pv",
    )
    log = load_taobao(path)
    assert list(log.user_ids) == ["1", "1"]
    assert list(log.item_ids) == ["10", "11"]
    assert list(log.types) == [CLICK, CART]
    assert list(log.categories) == ["5", "5"]
    assert log.ts.tolist() == [1511544070.0, 1511544080.0]
    report = log.report
    assert (report.read, report.loaded) == (8, 2)
    assert report.skipped == {
        "unknown event type": 1,
        "unparsable timestamp": 1,
        "timestamp out of range": 2,
        "empty user or item id": 1,
        "too few fields": 1,
    }
    assert report.examples[0] == "line 3: unknown event type ('like')"
    assert report.examples[3] == "line 6: timestamp out of range (milliseconds?)"
    assert report.examples[-1] == "line 8: too few fields (4 < 5)"
    assert "8 read, 2 loaded, 6 skipped" in report.summary()


def test_the_real_taobao_slice_reports_its_truncated_last_line(shared):
    log = load_taobao(shared / "data/taobao/UserBehavior_head.csv")
    assert log.report.read == 84476
    assert log.report.loaded == 84475
    assert log.report.skipped == {"too few fields": 1}
    assert log.report.examples == ["line 84476: too few fields (4 < 5)"]
    counts = np.bincount(log.types, minlength=4)
    assert counts.tolist() == [75872, 4497, 2356, 1750]  # 75,873 pv less the truncated one


def test_delimited_with_header_named_columns_and_type_map(tmp_path):
    path = write(
        tmp_path,
        "SessionId\tItemId\tTime\tKind\n"
        "s1\ti1\t1511544010.5\tview\n"
        "s1\ti2\t1511544011.0\tbasket\n"
        "s2\ti1\t1511544012.0\tclick\n",
    )
    spec = ColumnSpec(
        user="SessionId",
        item="ItemId",
        timestamp="Time",
        event_type="Kind",
        delimiter="\t",
        header=True,
        type_map={"view": "click", "basket": "cart"},
    )
    log = load_delimited(path, spec)
    assert log.types.tolist() == [CLICK, CART, CLICK]
    assert log.categories is None
    assert log.report.skipped == {}


def test_delimited_without_type_column_uses_the_default_type(tmp_path):
    path = write(tmp_path, "u,i,1511544001\nu,j,1511544002\n")
    log = load_delimited(path, ColumnSpec(user=0, item=1, timestamp=2))
    assert log.types.tolist() == [CLICK, CLICK]


def test_a_file_with_no_good_rows_is_a_clear_error(tmp_path):
    path = write(tmp_path, "1,10,5,pv\n1,10,5,zz,1\n")
    with pytest.raises(DataError, match="no usable events") as info:
        load_taobao(path)
    assert "line 2: unknown event type ('zz')" in str(info.value)


@pytest.mark.parametrize(
    ("spec_kwargs", "message"),
    [
        ({"user": "SessionId", "item": 1, "timestamp": 2}, "without a header"),
        ({"user": 0, "item": 1, "timestamp": 2, "type_map": {"pv": "view"}}, "mapping targets"),
    ],
)
def test_inconsistent_column_specs_are_refused(spec_kwargs, message):
    with pytest.raises(DataError, match=message):
        ColumnSpec(**spec_kwargs)


def test_missing_file_and_missing_header_column_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="cannot read event file"):
        load_taobao(tmp_path / "nope.csv")
    path = write(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="'Time' for timestamp is not in the header"):
        load_delimited(path, ColumnSpec(user="a", item="b", timestamp="Time", header=True))


def test_blank_lines_are_not_read_and_later_line_numbers_count_them(tmp_path):
    path = write(
        tmp_path, "1,10,5,pv,1511544001\n\n   \n\r\n1,11,5,zz,1511544002\n\n1,12,5,pv,x\n,,,,\n"
    )
    log = load_taobao(path)
    assert log.report.read == 4 and log.item_ids.tolist() == ["10"]
    assert log.report.examples == [
        "line 5: unknown event type ('zz')",
        "line 7: unparsable timestamp",
        "line 8: empty user or item id",
    ]


def test_rows_with_extra_fields_are_kept_in_file_order(tmp_path):
    path = write(
        tmp_path,
        "1,10,5,pv,1511544001\n1,11,5,pv,1511544002,extra\n1,12,5,pv,1511544003\n"
        "1,13,5,pv,1511544004,x,y\n",
    )
    log = load_taobao(path)
    assert log.item_ids.tolist() == ["10", "11", "12", "13"]
    assert log.ts.tolist() == [1511544001.0, 1511544002.0, 1511544003.0, 1511544004.0]
    assert log.report.skipped == {}


def test_ids_types_and_categories_are_stripped_of_surrounding_whitespace(tmp_path):
    path = write(
        tmp_path,
        " 1 ,10\t, 5 , cart ,1511544001\n1,\u300010,5,pv,1511544002\n \t,11,5,pv,1511544003\n",
    )
    log = load_taobao(path)
    assert log.user_ids.tolist() == ["1", "1"]
    assert log.item_ids.tolist() == ["10", "10"]
    assert log.categories.tolist() == ["5", "5"]
    assert log.types.tolist() == [CART, CLICK]
    assert log.report.examples == ["line 3: empty user or item id"]


def test_timestamps_are_read_as_python_float_reads_them(tmp_path):
    path = write(
        tmp_path,
        "1,10,5,pv, 1511544012 \n1,10,5,pv,1_511_544_000\n1,10,5,pv,1.5e9\n1,10,5,pv,inf\n",
    )
    log = load_taobao(path)
    assert log.ts.tolist() == [1511544012.0, 1511544000.0, 1.5e9]
    assert log.report.examples == ["line 4: timestamp out of range (milliseconds?)"]


def test_a_header_file_numbers_lines_from_the_header(tmp_path):
    path = write(tmp_path, "u;i;t\nA;x;1511544001\n\nB;;1511544002\nC;y\nD;z;1511544003;extra\n")
    log = load_delimited(path, ColumnSpec(user="u", item="i", timestamp="t", delimiter=";",
                                          header=True))  # fmt: skip
    assert log.user_ids.tolist() == ["A", "D"]
    assert log.report.read == 4
    assert log.report.examples == [
        "line 4: empty user or item id",
        "line 5: too few fields (2 < 3)",
    ]


def test_a_row_with_several_faults_counts_once_under_the_first_in_precedence(tmp_path):
    path = write(
        tmp_path,
        ",10,5,zz,soon\n"  # empty id, unparsable timestamp, unknown type
        "1,10,5,zz,soon\n"  # unparsable timestamp, unknown type
        "1,10,5,zz,1511544090000\n"  # out of range, unknown type
        "1,10,5,zz,1511544001\n"
        "1,10,5,pv,1511544001\n",
    )
    log = load_taobao(path)
    assert log.report.examples == [
        "line 1: empty user or item id",
        "line 2: unparsable timestamp",
        "line 3: timestamp out of range (milliseconds?)",
        "line 4: unknown event type ('zz')",
    ]


@pytest.mark.parametrize("bad_row", [b"1,1\xff0,5,pv,2\n", b"1,1\xff0,5\n"])
def test_invalid_utf8_is_a_clear_error_with_its_line(tmp_path, bad_row):
    path = tmp_path / "events.csv"
    path.write_bytes(b"1,10,5,pv,1\n\n" + bad_row + b"1,10,5,pv,3\n")
    with pytest.raises(DataError, match="unreadable at line 3: 'utf-8' codec can't decode"):
        load_taobao(path)
