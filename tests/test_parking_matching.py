"""Passages, exit-to-entry matching and the SessionBook state machine."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.parking.book import (
    ExitPending,
    ReadAbsorbed,
    SentToReview,
    SessionBook,
    SessionClosed,
    SessionOpened,
    SessionRevised,
)
from citybrain.parking.matching import (
    MatchKind,
    MatchOutcome,
    ReviewReason,
    Session,
    SessionStatus,
    close_session,
    entry_conflict,
    match_exit,
    open_session,
    settle,
)
from citybrain.parking.passages import (
    Direction,
    Passage,
    Read,
    group_passages,
    start_passage,
)

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=TZ)
GRACE = timedelta(minutes=10)
IN, OUT = Direction.IN, Direction.OUT
_ids = itertools.count(1)
E = TypeVar("E")


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def read(
    direction: Direction,
    raw: str,
    ts: datetime,
    *,
    camera: str = "cam1",
    lot: str = "L01",
    read_id: str | None = None,
) -> Read:
    rid = read_id if read_id is not None else f"r{next(_ids)}"
    return Read(rid, lot, camera, direction, raw, 0.9, ts)


def passage(direction: Direction, raw: str, minute: float, *, lot: str = "L01") -> Passage:
    return start_passage(read(direction, raw, at(minute), lot=lot))


def only(events: Sequence[object], kind: type[E]) -> E:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


def feed(book: SessionBook, *passages: Passage, received: datetime | None = None) -> list[object]:
    """Add passages in the given order, each received at its own time (or ``received``)."""
    events: list[object] = []
    for p in passages:
        events.extend(book.add_passage(p, received if received is not None else p.last_ts))
    return events


# ---- reads and passages ------------------------------------------------------------------


def test_read_derives_the_normalized_plate_and_keeps_the_raw_text() -> None:
    r = read(IN, "浙a·１２３４５", at())
    assert (r.plate, r.raw_plate) == ("浙A12345", "浙a·１２３４５")


def test_read_rejects_naive_time_empty_plate_and_bad_confidence() -> None:
    with pytest.raises(ValueError, match=r"Read\.ts must be timezone-aware"):
        read(IN, "浙A12345", datetime(2024, 5, 1, 10))
    with pytest.raises(ValueError, match="no plate characters"):
        read(IN, " · ", at())
    with pytest.raises(ValueError, match="confidence"):
        Read("r", "L01", "c", IN, "浙A12345", 1.5, at())


def test_cameras_and_frames_within_60s_are_one_passage() -> None:
    reads = [
        read(IN, "浙A·12345", at(seconds=0), camera="cam1"),
        read(IN, "浙A12345", at(seconds=2), camera="cam2"),
        read(IN, "浙A 12345", at(seconds=30), camera="cam1"),
        # 60 s after the previous read of the group: still the same passage (chained)
        read(IN, "浙A12345", at(seconds=90), camera="cam1"),
    ]
    [p] = group_passages(reversed(reads))  # input order does not matter
    assert p.plate == "浙A12345"
    assert p.read_ids == tuple(r.read_id for r in reads)
    assert p.raw_plates == ("浙A·12345", "浙A12345", "浙A 12345")  # evidence
    assert p.camera_ids == ("cam1", "cam2")
    assert (p.first_ts, p.last_ts) == (at(seconds=0), at(seconds=90))
    assert p.passage_id == reads[0].read_id


def test_reads_61s_apart_are_two_passages() -> None:
    a = read(IN, "浙A12345", at(seconds=0))
    b = read(IN, "浙A12345", at(seconds=61))
    assert [p.read_ids for p in group_passages([a, b])] == [(a.read_id,), (b.read_id,)]


def test_grouping_keys_on_lot_direction_and_lookalike_plate() -> None:
    reads = [
        read(IN, "浙A12345", at()),
        read(OUT, "浙A12345", at(seconds=5)),
        read(IN, "浙A12345", at(seconds=5), lot="L02"),
        read(IN, "浙A1234S", at(seconds=5)),  # an OCR look-alike read: the same passage
        read(IN, "浙A12346", at(seconds=5)),  # another plate: its own passage
    ]
    got = group_passages(reads)
    assert len(got) == 4
    [lookalike] = [p for p in got if len(p.read_ids) == 2]
    assert lookalike.raw_plates == ("浙A12345", "浙A1234S")


def test_a_duplicated_read_id_counts_once() -> None:
    r = read(IN, "浙A12345", at())
    [p] = group_passages([r, r])
    assert p.read_ids == (r.read_id,)


def test_streaming_reads_are_absorbed_into_their_passage() -> None:
    book = SessionBook(grace=GRACE)
    first = read(IN, "浙A12345", at(seconds=10), camera="cam1")
    opened = book.add_read(first, at(seconds=10))
    assert isinstance(opened[0], SessionOpened)
    # another camera, a read 8 s *earlier* arriving late, and a repeated frame
    for r in (
        read(IN, "浙A·12345", at(seconds=12), camera="cam2"),
        read(IN, "浙A12345", at(seconds=2), camera="cam3"),
        read(IN, "浙A12345", at(seconds=40), camera="cam1"),
    ):
        event, *revised = book.add_read(r, at(seconds=41))
        assert isinstance(event, ReadAbsorbed)
        # the earlier read moves the open session's entry to it; the others change nothing
        assert [type(e) for e in revised] == ([SessionRevised] if r.ts == at(seconds=2) else [])
    evidence = book.passage(first.read_id)
    assert len(evidence.read_ids) == 4
    assert (evidence.first_ts, evidence.last_ts) == (at(seconds=2), at(seconds=40))
    assert book.session(f"L01/{first.read_id}").entry_at == at(seconds=2)
    assert book.add_read(first, at(minutes=1)) == []  # replayed read: nothing
    # the exit, read twice
    closed = book.add_read(read(OUT, "浙A12345", at(60)), at(60))
    assert only(closed, SessionClosed).matched_by is MatchKind.EXACT
    assert isinstance(book.add_read(read(OUT, "浙A12345", at(60, 20)), at(61))[0], ReadAbsorbed)
    assert book.pending_exits() == []
    assert book.expire(at(600)) == []


# ---- matching rules ----------------------------------------------------------------------


def test_exact_match_closes_the_session() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A12345", 0))
    events = feed(book, passage(OUT, "浙A·12345", 75))
    closed = only(events, SessionClosed)
    assert closed.matched_by is MatchKind.EXACT
    s = closed.session
    assert (s.status, s.entry_at, s.exit_at, s.plate) == (
        SessionStatus.CLOSED,
        at(0),
        at(75),
        "浙A12345",
    )


def test_unique_lookalike_match_keeps_the_entry_plate() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A-1234D", 0))
    closed = only(feed(book, passage(OUT, "浙A12340", 30)), SessionClosed)
    assert closed.matched_by is MatchKind.LOOKALIKE
    assert (closed.session.plate, closed.session.exit_plate) == ("浙A1234D", "浙A12340")
    assert closed.session.matched_by is MatchKind.LOOKALIKE


def test_exact_beats_lookalike() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A1234D", 0), passage(IN, "浙A12340", 1))
    closed = only(feed(book, passage(OUT, "浙A12340", 30)), SessionClosed)
    assert closed.matched_by is MatchKind.EXACT
    assert closed.session.plate == "浙A12340"
    assert [s.plate for s in book.open_sessions()] == ["浙A1234D"]


def test_ambiguous_lookalikes_go_to_review_never_charged() -> None:
    book = SessionBook(grace=GRACE)
    d, q = passage(IN, "浙A1234D", 0), passage(IN, "浙A1234Q", 1)
    feed(book, d, q)
    out = passage(OUT, "浙A12340", 30)
    pending = only(feed(book, out), ExitPending).pending
    assert pending.reason is ReviewReason.AMBIGUOUS
    assert set(pending.candidates) == {f"L01/{d.passage_id}", f"L01/{q.passage_id}"}
    assert book.expire(at(30) + GRACE - timedelta(seconds=1)) == []
    review = only(book.expire(at(30) + GRACE), SentToReview)
    assert review.reason is ReviewReason.AMBIGUOUS
    assert review.session.status is SessionStatus.REVIEW
    assert set(review.session.related) == set(pending.candidates)
    assert review.session.entry_at is None and review.session.exit_at == at(30)
    assert len(book.open_sessions()) == 2  # neither candidate was closed
    assert not any(s.status is SessionStatus.CLOSED for s in book.sessions())


def test_a_late_exact_entry_resolves_an_ambiguous_exit_within_the_grace() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A1234D", 0), passage(IN, "浙A1234Q", 1))
    feed(book, passage(OUT, "浙A12340", 30))
    # the gateway replays the real entry, timed before the exit
    events = book.add_passage(passage(IN, "浙A12340", 5), at(32))
    closed = only(events, SessionClosed)
    assert (closed.matched_by, closed.session.entry_at) == (MatchKind.EXACT, at(5))
    assert book.expire(at(100)) == []


def test_an_exit_with_no_entry_goes_to_review_after_the_grace() -> None:
    book = SessionBook(grace=GRACE)
    out = passage(OUT, "浙A12345", 0)
    # a replayed exit: camera time 0, received an hour later; the grace counts from arrival
    pending = only(book.add_passage(out, at(60)), ExitPending).pending
    assert (pending.reason, pending.since) == (ReviewReason.NO_ENTRY, at(60))
    assert book.expire(at(60) + GRACE - timedelta(microseconds=1)) == []
    review = only(book.expire(at(60) + GRACE), SentToReview)
    assert review.reason is ReviewReason.NO_ENTRY
    assert review.session.exit_passage_id == out.passage_id
    assert book.pending_exits() == []
    assert book.expire(at(1000)) == []


def test_out_of_order_exit_then_entry_makes_the_right_session() -> None:
    book = SessionBook(grace=GRACE)
    assert isinstance(feed(book, passage(OUT, "浙A12345", 90), received=at(91))[0], ExitPending)
    events = book.add_passage(passage(IN, "浙A12345", 0), at(92))
    assert isinstance(events[0], SessionOpened)
    closed = only(events, SessionClosed)
    assert (closed.session.entry_at, closed.session.exit_at) == (at(0), at(90))
    assert book.pending_exits() == []


def test_out_of_order_lookalike() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(OUT, "浙A12340", 90), received=at(91))
    closed = only(book.add_passage(passage(IN, "浙A1234D", 0), at(92)), SessionClosed)
    assert closed.matched_by is MatchKind.LOOKALIKE
    assert closed.session.plate == "浙A1234D"


def test_an_entry_after_a_pending_exit_does_not_pair_with_it() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(OUT, "浙A12345", 0))
    events = feed(book, passage(IN, "浙A12345", 5))
    assert [type(e) for e in events] == [SessionOpened]
    assert len(book.pending_exits()) == 1


def test_lots_are_separate() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A12345", 0, lot="L01"))
    assert isinstance(feed(book, passage(OUT, "浙A12345", 30, lot="L02"))[0], ExitPending)


def test_leave_and_return_is_two_sessions() -> None:
    e1, x1 = passage(IN, "浙A12345", 0), passage(OUT, "浙A12345", 60)
    e2, x2 = passage(IN, "浙A12345", 120), passage(OUT, "浙A12345", 180)
    for order in ([e1, x1, e2, x2], [x2, x1, e2, e1], [e1, e2, x1, x2], [e2, x2, e1, x1]):
        book = SessionBook(grace=GRACE)
        feed(book, *order, received=at(200))
        assert book.expire(at(1000)) == []
        got = [(s.status, s.entry_at, s.exit_at) for s in book.sessions()]
        assert got == [
            (SessionStatus.CLOSED, at(0), at(60)),
            (SessionStatus.CLOSED, at(120), at(180)),
        ], order


def test_a_missed_exit_goes_to_review_when_the_car_enters_again() -> None:
    book = SessionBook(grace=GRACE)
    first, second = passage(IN, "浙A12345", 0), passage(IN, "浙A12345", 120)
    feed(book, first, second)
    assert book.expire(at(120) + GRACE - timedelta(seconds=1)) == []
    review = only(book.expire(at(120) + GRACE), SentToReview)
    assert review.reason is ReviewReason.NO_EXIT
    assert review.session.entry_passage_id == first.passage_id
    assert review.session.related == (f"L01/{second.passage_id}",)
    assert [s.entry_at for s in book.open_sessions()] == [at(120)]


def test_a_late_exit_within_the_grace_saves_the_superseded_session() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A12345", 0), passage(IN, "浙A12345", 120))
    closed = only(book.add_passage(passage(OUT, "浙A12345", 60), at(121)), SessionClosed)
    assert closed.session.entry_at == at(0)
    assert book.expire(at(1000)) == []


def test_passages_inside_an_already_decided_stay_go_to_review() -> None:
    # Known limit: a close is final. E1 is known, X2 arrives before E2 and X1 (a replay
    # delivered out of order across gateways), so E1-X2 closes; the passages that turn up
    # inside that stay are not charged but sent to review, naming the session.
    book = SessionBook(grace=GRACE)
    e1, x1 = passage(IN, "浙A12345", 0), passage(OUT, "浙A12345", 60)
    e2, x2 = passage(IN, "浙A12345", 120), passage(OUT, "浙A12345", 180)
    feed(book, e1, x2, received=at(200))
    first = f"L01/{e1.passage_id}"
    for late in (e2, x1):
        review = only(book.add_passage(late, at(201)), SentToReview)
        assert (review.reason, review.session.related) == (ReviewReason.CONFLICT, (first,))


def test_replayed_passages_are_idempotent() -> None:
    book = SessionBook(grace=GRACE)
    e, x = passage(IN, "浙A12345", 0), passage(OUT, "浙A12345", 30)
    feed(book, e, x)
    assert feed(book, e, x) == []
    orphan = passage(OUT, "浙A99999", 40)
    feed(book, orphan)
    assert feed(book, orphan) == []
    assert len(book.sessions()) == 1 and len(book.pending_exits()) == 1


def test_naive_arrival_times_are_rejected() -> None:
    book = SessionBook(grace=GRACE)
    naive = datetime(2024, 5, 1, 10)
    with pytest.raises(ValueError, match="received_at must be timezone-aware"):
        book.add_passage(passage(IN, "浙A12345", 0), naive)
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        book.expire(naive)


def test_settlement_statuses() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A12345", 0), passage(IN, "浙B11111", 0))
    a = only(feed(book, passage(OUT, "浙A12345", 30)), SessionClosed).session
    b = only(feed(book, passage(OUT, "浙B11111", 30)), SessionClosed).session
    assert book.settle(a.session_id, account_bound=True).status is SessionStatus.SETTLED
    assert book.settle(b.session_id, account_bound=False).status is SessionStatus.UNPAID
    with pytest.raises(ValueError, match="not closed"):
        book.settle(a.session_id, account_bound=True)


def test_state_can_be_rebuilt_from_its_records() -> None:
    """What a database would store (sessions, pending exits, passages) is the whole state."""
    book = SessionBook(grace=GRACE)
    feed(book, passage(IN, "浙A1234D", 0), passage(OUT, "浙A77777", 5))
    # the rules need the sessions, the pending exits and the passages of those exits
    pids = [x.passage_id for x in book.pending_exits()]
    copy = SessionBook(
        grace=GRACE,
        sessions=book.sessions(),
        pending=book.pending_exits(),
        passages=[book.passage(p) for p in pids],
    )
    x = passage(OUT, "浙A12340", 30)
    assert feed(copy, x) == feed(book, x)
    later = at(5) + GRACE
    assert copy.expire(later) == book.expire(later)


# ---- the pure rules ----------------------------------------------------------------------


def sess(plate: str, entry_min: float, exit_min: float | None = None) -> Session:
    s = open_session(passage(IN, plate, entry_min), at(entry_min))
    if exit_min is not None:
        s = close_session(s, passage(OUT, plate, exit_min), MatchKind.EXACT)
    return s


def test_match_exit_rules() -> None:
    a = sess("浙A12345", 0)
    assert match_exit("L01", "浙A12345", at(30), [a]).outcome is MatchOutcome.EXACT
    # an entry after the exit is not a candidate
    assert match_exit("L01", "浙A12345", at(-5), [a]).outcome is MatchOutcome.NONE
    # another lot's session is not a candidate
    assert match_exit("L02", "浙A12345", at(30), [a]).outcome is MatchOutcome.NONE
    # look-alike
    r = match_exit("L01", "浙A1Z34S", at(30), [a, sess("浙A99999", 0)])
    assert (r.outcome, r.session) == (MatchOutcome.LOOKALIKE, a)
    # ambiguous
    b = sess("浙A1234S", 0)
    r = match_exit("L01", "浙A1Z34S", at(30), [a, b])
    assert r.outcome is MatchOutcome.AMBIGUOUS and set(r.candidates) == {a, b}
    # exact plate's latest stay is already closed, before the exit: no candidate
    closed = sess("浙A12345", 0, 20)
    assert match_exit("L01", "浙A12345", at(30), [closed]).outcome is MatchOutcome.NONE
    # ... closed after the exit: the exit is inside a decided stay
    r = match_exit("L01", "浙A12345", at(10), [closed])
    assert (r.outcome, r.candidates) == (MatchOutcome.CONFLICT, (closed,))
    # a look-alike whose own plate re-entered and left since is not a candidate
    old = sess("浙A1234S", 0)
    newer = sess("浙A1234S", 10, 20)
    assert match_exit("L01", "浙A12345", at(30), [old, newer]).outcome is MatchOutcome.NONE


def test_entry_conflict_rule() -> None:
    closed = sess("浙A12345", 0, 60)
    assert entry_conflict("L01", "浙A12345", at(30), [closed]) == closed
    assert entry_conflict("L01", "浙A12345", at(90), [closed]) is None
    assert entry_conflict("L01", "浙A12345", at(-10), [closed]) is None  # before: fine
    assert entry_conflict("L02", "浙A12345", at(30), [closed]) is None


def test_settle_requires_a_closed_session() -> None:
    with pytest.raises(ValueError, match="not closed"):
        settle(sess("浙A12345", 0), account_bound=True)


# ---- property: replays in any visit order ------------------------------------------------

PLATES = ("浙A7773", "浙A7774", "浙A7779")  # 3, 4, 7, 9 are in no look-alike class


@st.composite
def visits(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Non-overlapping visits (plate, entry minute, exit minute) per plate."""
    out: list[tuple[str, int, int]] = []
    for plate in PLATES:
        t = draw(st.integers(0, 30))
        for _ in range(draw(st.integers(0, 4))):
            stay = draw(st.integers(1, 300))
            out.append((plate, t, t + stay))
            t += stay + draw(st.integers(2, 300))
    return out


@settings(max_examples=200, deadline=None)
@given(visits(), st.randoms(use_true_random=False))
def test_any_visit_order_with_either_passage_first_gives_the_right_sessions(
    plan: list[tuple[str, int, int]], rnd: random.Random
) -> None:
    arrivals: list[Passage] = []
    for plate, t_in, t_out in rnd.sample(plan, len(plan)):
        pair = [passage(IN, plate, t_in), passage(OUT, plate, t_out)]
        rnd.shuffle(pair)
        arrivals.extend(pair)
    book = SessionBook(grace=GRACE)
    feed(book, *arrivals, received=at(10_000))
    assert book.expire(at(20_000)) == []
    got = sorted((s.plate, s.entry_at, s.exit_at, s.status) for s in book.sessions())
    want = sorted((p, at(a), at(b), SessionStatus.CLOSED) for p, a, b in plan)
    assert got == want
