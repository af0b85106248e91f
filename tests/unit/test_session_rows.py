"""Reading a session's ZRANGE reply: one JSON parse for all members, bad ones skipped."""

from recsvc.sessions import SessionEvent, _parse_rows


def test_all_members_read_in_order() -> None:
    flat = [b'["e1","i1","click"]', b"10.5", b'["e2","i2","cart"]', b"11"]
    assert _parse_rows(flat) == (
        [SessionEvent("e1", "i1", "click", 10.5), SessionEvent("e2", "i2", "cart", 11.0)],
        0,
    )


def test_an_empty_session() -> None:
    assert _parse_rows([]) == ([], 0)


def test_only_the_unreadable_members_are_skipped() -> None:
    flat = [
        b'["e1","i1","click"]', b"1",
        b"not json", b"2",
        b'["e3","i3"]', b"3",  # two fields
        b'["e4","i4","click"],["x","y","z"]', b"4",  # would shift the rows if joined
        b'["e5","i5","click"]', b"5",
    ]  # fmt: skip
    events, skipped = _parse_rows(flat)
    assert [e.event_id for e in events] == ["e1", "e5"]
    assert skipped == 3
