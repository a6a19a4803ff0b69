"""replay_guard: time-based sequence numbers, the replay window, freshness."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.clock import ManualClock
from shared.services.replay_guard import (
    Rejection,
    ReplayWindow,
    SequenceSource,
    check_freshness,
)


def test_sequences_grow_strictly_even_when_the_clock_stands_still() -> None:
    clock = ManualClock(1_800_000_000.0)
    source = SequenceSource(clock)
    numbers = [source.next() for _ in range(5)]
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 1_800_000_000_000_000


def test_a_new_source_after_a_restart_continues_above_the_old_one() -> None:
    clock = ManualClock(1_800_000_000.0)
    before = SequenceSource(clock).next()
    clock.advance(0.001)
    assert SequenceSource(clock).next() > before


def test_window_admits_each_sequence_once_in_any_order() -> None:
    window = ReplayWindow()
    for seq in (30, 10, 20):
        assert window.admits(seq)
        window.record(seq, 100.0, now=100.0, max_age=60)
    assert not any(window.admits(s) for s in (10, 20, 30))
    assert window.admits(15) and window.admits(31)


def test_recording_what_the_window_refuses_is_a_bug() -> None:
    window = ReplayWindow()
    window.record(5, 100.0, now=100.0, max_age=60)
    with pytest.raises(ValueError, match="not admitted"):
        window.record(5, 100.0, now=100.0, max_age=60)


def test_entries_older_than_max_age_leave_and_raise_the_floor() -> None:
    window = ReplayWindow()
    window.record(10, 100.0, now=100.0, max_age=60)
    window.record(20, 150.0, now=150.0, max_age=60)
    window.record(30, 170.0, now=170.0, max_age=60)  # 10 (t=100) is now older than 60 s
    assert window.floor == 10
    assert sorted(window.seen) == [20, 30]
    assert not window.admits(9) and not window.admits(10)
    assert window.admits(11)


def test_a_full_window_drops_its_lowest_entries() -> None:
    window = ReplayWindow()
    for seq in range(1, 6):
        window.record(seq, 100.0, now=100.0, max_age=60, max_entries=3)
    assert sorted(window.seen) == [3, 4, 5]
    assert window.floor == 2
    assert not window.admits(2)


def test_window_json_round_trip_and_refusals() -> None:
    window = ReplayWindow()
    window.record(7, 100.5, now=100.5, max_age=60)
    window.record(3, 100.0, now=100.5, max_age=60)
    again = ReplayWindow.from_json(window.to_json())
    assert again == window
    assert ReplayWindow.from_json({}) == ReplayWindow()
    for bad in ([], {"seen": [["x", 1]]}, {"floor": "nope"}, {"seen": [[1]]}):
        with pytest.raises(ValueError, match="replay window"):
            ReplayWindow.from_json(bad)


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (1000.0, None),
        (941.0, None),
        (939.0, Rejection.STALE),
        (1004.0, None),
        (1006.0, Rejection.FROM_FUTURE),
    ],
)
def test_freshness(sent: float, expected: Rejection | None) -> None:
    stamp = datetime.fromtimestamp(sent, UTC)
    assert check_freshness(stamp, 1000.0, max_age=60, max_skew=5) is expected
