"""OCR misreads: look-alike reads grouped into one passage, stays charged by every reading.

The SUMO validation found the same car crossing a gate split into two passages when one
camera (or one repeated frame) misread the plate; and a misread entry turning a bound car's
stay into a debt on a plate nobody has. These tests pin the fix in the pure core.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
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
from citybrain.parking.ledger import default_tariffs
from citybrain.parking.matching import (
    MatchKind,
    ReviewReason,
    Session,
    SessionStatus,
    close_session,
    display_plate,
    open_session,
    redisplay,
    revise,
    stay_plates,
)
from citybrain.parking.passages import (
    Direction,
    Passage,
    Read,
    belongs_to,
    best_plate,
    extend,
    group_passages,
    passage_of,
    plate_support,
    start_passage,
)
from citybrain.parking.settlement import choose_account, settle_stay

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=TZ)
GRACE = timedelta(minutes=10)
IN, OUT = Direction.IN, Direction.OUT
TARIFF = default_tariffs()["L01"]
_ids = itertools.count(1)

RIGHT = "浙E88656"
WRONG = "浙E886S6"  # one camera's OCR look-alike of RIGHT
WRONG2 = "浙EB8656"


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def rd(
    direction: Direction,
    raw: str,
    ts: datetime,
    *,
    conf: float = 0.9,
    camera: str = "cam1",
    lot: str = "L01",
    rid: str | None = None,
) -> Read:
    return Read(rid if rid is not None else f"r{next(_ids)}", lot, camera, direction, raw, conf, ts)


def feed(book: SessionBook, reads: Iterable[Read], received: datetime) -> list[object]:
    events: list[object] = []
    for r in reads:
        events.extend(book.add_read(r, received))
    return events


def of(events: Sequence[object], kind: type[object]) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def closed_sessions(book: SessionBook) -> list[Session]:
    return [s for s in book.sessions() if s.status is SessionStatus.CLOSED]


# ---- passages ------------------------------------------------------------------------------


def test_mixed_correct_and_misread_reads_are_one_passage_in_any_order() -> None:
    reads = [
        rd(IN, "浙E·88656", at(seconds=0), camera="cam1", conf=0.95),
        rd(IN, "浙E886S6", at(seconds=1), camera="cam2", conf=0.7),  # misread
        rd(IN, "浙E88656", at(seconds=20), camera="cam1", conf=0.93),  # repeated frame
        rd(IN, "浙EB8656", at(seconds=50), camera="cam2", conf=0.6),  # misread frame
    ]
    want = group_passages(reads)
    assert len(want) == 1
    [p] = want
    assert (p.plate, p.first_ts, p.last_ts) == (RIGHT, at(0), at(seconds=50))
    assert p.read_ids == tuple(r.read_id for r in reads)  # every read kept as evidence
    assert p.raw_plates == ("浙E·88656", "浙E886S6", "浙E88656", "浙EB8656")
    assert p.plates == (RIGHT, WRONG, WRONG2)
    for order in itertools.permutations(reads):
        assert group_passages(order) == want
        # streamed into a book, in this order: one passage, same plate, same times
        book = SessionBook(grace=GRACE)
        feed(book, order, at(1))
        [s] = book.sessions()
        got = book.passage(s.entry_passage_id or "")
        assert (got.plate, got.first_ts, got.last_ts, got.reads) == (
            p.plate,
            p.first_ts,
            p.last_ts,
            p.reads,
        )
        assert (s.plate, s.entry_at, s.status) == (RIGHT, at(0), SessionStatus.OPEN)


def test_the_passage_plate_is_the_majority_then_confidence_then_earliest() -> None:
    a = rd(IN, WRONG, at(seconds=0), conf=0.6)
    b = rd(IN, RIGHT, at(seconds=3), conf=0.9)
    c = rd(IN, RIGHT, at(seconds=5), conf=0.5)
    # majority wins over a higher single confidence
    assert best_plate([a, rd(IN, WRONG, at(seconds=1), conf=0.95), b]) == WRONG
    # one read each: higher confidence
    assert best_plate([a, b]) == RIGHT
    # two each, summed confidence 1.4 vs 1.4: the earliest reading
    d = rd(IN, WRONG, at(seconds=6), conf=0.8)
    assert [s.reads for s in plate_support([a, b, c, d])] == [2, 2]
    assert best_plate([a, b, c, d]) == WRONG
    assert best_plate([d, c, b, a]) == WRONG


def test_a_misread_first_frame_still_times_the_passage() -> None:
    # the misread frame came first: before, the session started at the later correct read
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, WRONG, at(seconds=0), conf=0.6), rd(IN, RIGHT, at(seconds=40))], at(1))
    [s] = book.sessions()
    assert (s.plate, s.entry_at) == (RIGHT, at(0))


def test_reads_more_than_60s_apart_or_of_other_plates_are_other_passages() -> None:
    a = rd(IN, RIGHT, at(seconds=0))
    p = start_passage(a)
    assert belongs_to(p, rd(IN, WRONG, at(seconds=60)))
    assert not belongs_to(p, rd(IN, WRONG, at(seconds=61)))
    assert not belongs_to(p, rd(IN, "浙E88657", at(seconds=1)))  # 7 is no look-alike of 6
    assert not belongs_to(p, rd(OUT, RIGHT, at(seconds=1)))
    with pytest.raises(ValueError, match="not of passage"):
        extend(p, rd(IN, "浙E88657", at(seconds=1)))
    with pytest.raises(ValueError, match="not of passage"):
        passage_of("x", [a, rd(OUT, RIGHT, at(seconds=1))])


def test_a_summary_without_its_reads_keeps_its_plate() -> None:
    """A passage loaded as plate and times only: a joining read cannot out-vote it."""
    full = start_passage(rd(IN, RIGHT, at(0)))
    summary = Passage(
        full.passage_id, "L01", IN, RIGHT, at(0), at(0), read_ids=(), raw_plates=(), camera_ids=()
    )
    assert not summary.has_evidence
    grown = extend(summary, rd(IN, WRONG, at(seconds=-5), conf=1.0))
    assert (grown.plate, grown.first_ts, grown.has_evidence) == (RIGHT, at(seconds=-5), False)
    assert extend(full, rd(IN, WRONG, at(seconds=-5), conf=1.0)).plate == WRONG  # with evidence


# ---- the failures, through the book -------------------------------------------------


def test_a_misread_repeated_frame_makes_no_extra_session() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, RIGHT, at(0)), rd(IN, WRONG, at(seconds=30), conf=0.6)], at(1))
    events = feed(book, [rd(OUT, RIGHT, at(90)), rd(OUT, WRONG, at(90, 15), conf=0.6)], at(91))
    assert len(of(events, SessionClosed)) == 1
    assert book.expire(at(1000)) == []  # nothing left open, nothing to review
    [s] = book.sessions()
    assert (s.status, s.plate, s.entry_at, s.exit_at) == (
        SessionStatus.CLOSED,
        RIGHT,
        at(0),
        at(90),
    )


def test_a_correct_exit_read_after_a_misread_one_joins_it_not_review() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, RIGHT, at(0)), rd(IN, RIGHT, at(seconds=2), camera="cam2")], at(1))
    first = feed(book, [rd(OUT, WRONG, at(90), conf=0.6)], at(90))
    [closed] = of(first, SessionClosed)
    assert isinstance(closed, SessionClosed) and closed.matched_by is MatchKind.LOOKALIKE
    later = feed(book, [rd(OUT, RIGHT, at(90, 1), camera="cam2")], at(91))
    assert [type(e) for e in later] == [ReadAbsorbed, SessionRevised]
    assert book.expire(at(1000)) == []
    [s] = book.sessions()
    # the exit passage now reads RIGHT (confidence), so the match is exact after all
    assert (s.status, s.plate, s.exit_plate, s.matched_by) == (
        SessionStatus.CLOSED,
        RIGHT,
        RIGHT,
        MatchKind.EXACT,
    )
    assert book.stay_plates(s.session_id) == (RIGHT, WRONG)


def test_a_misread_exit_first_cannot_close_a_second_stay() -> None:
    """Before: the misread exit was its own passage; it closed an extra session, a second
    debt for the same stay. Now both exit reads are one passage: one close."""
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, WRONG, at(seconds=0), conf=0.6), rd(IN, RIGHT, at(seconds=1))], at(1))
    feed(book, [rd(OUT, WRONG, at(60), conf=0.6), rd(OUT, RIGHT, at(60, 1))], at(61))
    assert [(s.status, s.entry_at, s.exit_at) for s in book.sessions()] == [
        (SessionStatus.CLOSED, at(0), at(60))
    ]


# ---- settlement: misread entry, correct exit -----------------------------------------------


def stay(entry: Sequence[Read], exit_: Sequence[Read]) -> tuple[SessionBook, Session]:
    book = SessionBook(grace=GRACE)
    feed(book, entry, at(1))
    feed(book, exit_, at(200))
    [s] = book.sessions()
    assert s.status is SessionStatus.CLOSED
    return book, s


def test_a_misread_entry_with_a_correct_exit_is_charged_to_the_bound_account() -> None:
    book, s = stay([rd(IN, WRONG, at(0), conf=0.7)], [rd(OUT, RIGHT, at(140), conf=0.9)])
    plates = book.stay_plates(s.session_id)
    assert plates == (RIGHT, WRONG)
    money = settle_stay(s, TARIFF, plates, {RIGHT: "acct-car"})
    assert (money.session.status, money.account, money.charge_cents) == (
        SessionStatus.SETTLED,
        "acct-car",
        2500,
    )
    # the exit's reading is better supported (confidence): it is the displayed plate
    assert (money.session.plate, money.session.exit_plate) == (RIGHT, RIGHT)
    assert money.session.matched_by is MatchKind.LOOKALIKE  # entry and exit plates differ


def test_a_tie_keeps_the_entry_plate_but_the_bound_reading_wins_the_label() -> None:
    book, s = stay([rd(IN, WRONG, at(0), conf=0.9)], [rd(OUT, RIGHT, at(140), conf=0.9)])
    assert (s.plate, s.exit_plate, s.matched_by) == (WRONG, RIGHT, MatchKind.LOOKALIKE)
    money = settle_stay(s, TARIFF, book.stay_plates(s.session_id), {RIGHT: "acct-car"})
    assert (money.session.status, money.account) == (SessionStatus.SETTLED, "acct-car")
    assert money.session.plate == RIGHT  # the reading bound to the account that pays
    # without an account the vote stands: a debt is recorded on the entry's reading
    debt = settle_stay(s, TARIFF, book.stay_plates(s.session_id), {})
    assert (debt.session.status, debt.session.plate) == (SessionStatus.UNPAID, WRONG)


def test_the_bound_reading_keeps_the_label_when_later_reads_outvote_it() -> None:
    """Entry read right once, exit read wrong twice: the vote says WRONG, the account
    bound to RIGHT pays, RIGHT is shown; a late misread of the entry changes nothing."""
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, RIGHT, at(0), conf=0.8)], at(1))
    events = feed(
        book,
        [rd(OUT, WRONG, at(140), conf=0.9), rd(OUT, WRONG, at(140, 2), camera="cam2")],
        at(140),
    )
    [closed] = of(events, SessionClosed)
    assert isinstance(closed, SessionClosed)
    sid = closed.session.session_id
    money = settle_stay(book.session(sid), TARIFF, book.stay_plates(sid), {RIGHT: "acct"})
    assert (money.session.plate, money.account) == (RIGHT, "acct")
    book.decide(money.session, label_fixed=True)
    feed(book, [rd(OUT, WRONG, at(140, 4), camera="cam3")], at(141))
    feed(book, [rd(IN, WRONG, at(0, 1), camera="cam2", conf=0.99)], at(142))
    shown = book.session(sid)
    assert (shown.plate, shown.exit_plate, shown.status) == (RIGHT, WRONG, SessionStatus.SETTLED)


def test_several_accounts_among_the_stay_plates_go_to_review_uncharged() -> None:
    book, s = stay([rd(IN, WRONG, at(0))], [rd(OUT, RIGHT, at(140))])
    bindings = {RIGHT: "acct-a", WRONG: "acct-b"}
    money = settle_stay(s, TARIFF, book.stay_plates(s.session_id), bindings)
    assert money.session.status is SessionStatus.REVIEW
    assert money.session.review_reason is ReviewReason.AMBIGUOUS
    assert (money.account, money.charge_cents, money.charged) == (None, None, False)
    assert (money.fee_cents, money.candidates) == (2500, ("acct-a", "acct-b"))
    # the same account behind both plates is not ambiguous
    same = settle_stay(s, TARIFF, book.stay_plates(s.session_id), dict.fromkeys(bindings, "a"))
    assert (same.session.status, same.account) == (SessionStatus.SETTLED, "a")
    # decided: a later read does not revise it
    assert revise(money.session, book.passage(s.entry_passage_id or ""), None) is money.session
    # a free stay with several accounts is not guessed either
    _, short = stay([rd(IN, WRONG, at(0))], [rd(OUT, RIGHT, at(5))])
    free = settle_stay(short, TARIFF, (RIGHT, WRONG), bindings)
    assert (free.session.status, free.fee_cents, free.charged) == (SessionStatus.REVIEW, 0, False)


def test_agreeing_reads_look_up_only_their_plate() -> None:
    book, s = stay([rd(IN, RIGHT, at(0))], [rd(OUT, RIGHT, at(140))])
    assert book.stay_plates(s.session_id) == (RIGHT,)
    # a binding of a look-alike plate nobody read is not this car's
    money = settle_stay(s, TARIFF, book.stay_plates(s.session_id), {WRONG: "other"})
    assert (money.session.status, money.account) == (SessionStatus.UNPAID, None)
    # plates that are not look-alikes of the session's cannot be this car
    assert choose_account(s, ["浙A00000"], {"浙A00000": "x"}).accounts == ()


def test_stay_plates_and_display_rule_pure() -> None:
    e = passage_of("e", [rd(IN, WRONG, at(0), conf=0.7), rd(IN, RIGHT, at(0, 1), conf=0.6)])
    x = passage_of("x", [rd(OUT, RIGHT, at(30), conf=0.8)])
    assert e.plate == WRONG
    # pooled: RIGHT 2 reads vs WRONG 1: strictly stronger, the exit's plate is shown
    assert display_plate(e, x) == RIGHT
    assert display_plate(e, None) == WRONG
    s = close_session(open_session(e, at(1)), x, MatchKind.LOOKALIKE)
    assert stay_plates(s, [e, x]) == (RIGHT, WRONG)
    assert stay_plates(s, [start_passage(rd(IN, WRONG2, at(0)))]) == (RIGHT, WRONG)  # not its
    r = revise(s, e, x)
    assert (r.plate, r.exit_plate, r.matched_by) == (RIGHT, RIGHT, MatchKind.LOOKALIKE)
    done = replace(r, status=SessionStatus.SETTLED)
    assert revise(done, e, None) is done  # money decided: final
    with pytest.raises(ValueError, match="is not the exit"):
        revise(s, e, e)


def test_a_settled_stay_is_final_when_a_late_read_arrives() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, RIGHT, at(0, 10))], at(1))
    [closed] = of(feed(book, [rd(OUT, RIGHT, at(140))], at(140)), SessionClosed)
    assert isinstance(closed, SessionClosed)
    book.settle(closed.session.session_id, account_bound=True)
    late = feed(book, [rd(IN, WRONG, at(0), conf=0.99)], at(141))  # 10 s earlier, misread
    assert [type(e) for e in late] == [ReadAbsorbed]
    s = book.session(closed.session.session_id)
    assert (s.status, s.entry_at, s.plate) == (SessionStatus.SETTLED, at(0, 10), RIGHT)


def test_a_decided_stay_is_shown_as_the_exits_next_read_says() -> None:
    # Seen in `parking validate --seed 3`: the entry read right (0.988) and wrong (0.793);
    # the exit's first read to arrive is the misread (0.583): decided with WRONG shown
    # (2 reads against 1). The exit's other camera (RIGHT, 0.944) arrives a moment later.
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, RIGHT, at(0), conf=0.988), rd(IN, WRONG, at(0), conf=0.793)], at(1))
    [closed] = of(feed(book, [rd(OUT, WRONG, at(140), conf=0.583)], at(140)), SessionClosed)
    assert isinstance(closed, SessionClosed) and closed.session.plate == WRONG
    decided = book.settle(closed.session.session_id, account_bound=False)  # a debt
    assert (decided.status, decided.plate) == (SessionStatus.UNPAID, WRONG)
    late = feed(book, [rd(OUT, RIGHT, at(140), camera="cam2", conf=0.944)], at(140, 1))
    [revised] = of(late, SessionRevised)
    assert isinstance(revised, SessionRevised)
    s = revised.session
    assert (s.plate, s.exit_plate) == (RIGHT, RIGHT)  # 2 reads, 1.932 against 1.376
    # times, status and match stay as decided
    assert (s.status, s.entry_at, s.exit_at, s.matched_by) == (
        SessionStatus.UNPAID,
        decided.entry_at,
        decided.exit_at,
        decided.matched_by,
    )
    assert book.session(s.session_id) == s
    # the same reads in the order the cameras saw them give the same shown plate
    other = SessionBook(grace=GRACE)
    feed(other, [rd(IN, RIGHT, at(0), conf=0.988), rd(IN, WRONG, at(0), conf=0.793)], at(1))
    feed(other, [rd(OUT, RIGHT, at(140), conf=0.944), rd(OUT, WRONG, at(140), conf=0.583)], at(140))
    assert [x.plate for x in other.sessions()] == [RIGHT]


def test_redisplay_needs_a_decided_stay_and_both_passages_with_their_reads() -> None:
    e = passage_of("e", [rd(IN, WRONG, at(0), conf=0.7), rd(IN, RIGHT, at(0, 1), conf=0.6)])
    x = passage_of("x", [rd(OUT, RIGHT, at(30), conf=0.8)])
    s = close_session(open_session(e, at(1)), x, MatchKind.LOOKALIKE)
    assert s.plate == WRONG
    assert redisplay(s, e, x) is s  # closed: revise's business, not redisplay's
    done = replace(s, status=SessionStatus.SETTLED)
    assert redisplay(done, e, x).plate == RIGHT
    assert redisplay(done, e, None) is done
    bare = replace(x, reads=())
    assert redisplay(done, e, bare) is done  # no reads: no vote
    with pytest.raises(ValueError, match="is not the exit"):
        redisplay(done, e, e)


def test_a_pending_exit_follows_its_passage_and_is_matched_again() -> None:
    book = SessionBook(grace=GRACE)
    feed(book, [rd(IN, RIGHT, at(0)), rd(IN, "浙E8865G", at(0, 1))], at(1))  # two look-alike
    feed(book, [rd(IN, "浙E88G56", at(5))], at(5))  # ... open stays: ambiguous exits
    got = feed(book, [rd(OUT, "浙EB8656", at(30), conf=0.5)], at(30))
    [pending] = of(got, ExitPending)
    assert isinstance(pending, ExitPending) and pending.pending.reason is ReviewReason.AMBIGUOUS
    # the other camera reads it right: the passage's plate is now RIGHT, an exact match
    got = feed(book, [rd(OUT, RIGHT, at(30, 2), camera="cam2", conf=0.9)], at(31))
    [closed] = of(got, SessionClosed)
    assert isinstance(closed, SessionClosed) and closed.matched_by is MatchKind.EXACT
    assert (closed.session.entry_at, closed.session.exit_at) == (at(0), at(30))
    assert book.pending_exits() == []


# ---- re-entry, and any arrival order --------------------------------------------------------


def test_leave_and_return_with_misreads_is_two_sessions() -> None:
    visit1 = [rd(IN, RIGHT, at(0)), rd(IN, WRONG, at(0, 3), conf=0.6)]
    visit1 += [rd(OUT, WRONG, at(60), conf=0.6), rd(OUT, RIGHT, at(60, 2))]
    visit2 = [rd(IN, WRONG2, at(62), conf=0.6), rd(IN, RIGHT, at(62, 1))]
    visit2 += [rd(OUT, RIGHT, at(120)), rd(OUT, RIGHT, at(120, 20))]
    for first, second in ((visit1, visit2), (visit2, visit1)):
        book = SessionBook(grace=GRACE)
        feed(book, [*first, *second], at(200))
        assert book.expire(at(1000)) == []
        got = [(s.status, s.plate, s.entry_at, s.exit_at) for s in book.sessions()]
        assert got == [
            (SessionStatus.CLOSED, RIGHT, at(0), at(60)),
            (SessionStatus.CLOSED, RIGHT, at(62), at(120)),
        ]


Canon = tuple[object, ...]


def canonical(book: SessionBook) -> list[Canon]:
    """The sessions without their ids (a passage is named after its first read to arrive):
    each with the reads of its entry and exit passages instead."""

    def reads(pid: str | None) -> frozenset[str]:
        return frozenset() if pid is None else frozenset(book.passage(pid).read_ids)

    out: list[Canon] = [
        (
            s.lot_id,
            s.plate,
            s.status,
            s.entry_at,
            s.exit_at,
            s.exit_plate,
            s.matched_by,
            s.review_reason,
            reads(s.entry_passage_id),
            reads(s.exit_passage_id),
            book.stay_plates(s.session_id),
        )
        for s in book.sessions()
    ]
    return sorted(out, key=repr)


CARS = {  # true plate -> its OCR misreadings (keys differ between cars)
    "浙E88656": ("浙E886S6", "浙EB8656", "浙E8865G"),
    "浙A12340": ("浙A1234D", "浙AI2340", "浙A1Z340"),
    "浙C77773": ("浙C77773",),  # no look-alike character: always read right
}


@st.composite
def gate_reads(
    draw: st.DrawFn, direction: Direction, plate: str, minute: int
) -> list[tuple[Direction, str, float, float]]:
    """1-4 reads of one passage within 50 s: (direction, raw plate, seconds, confidence)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        wrong = draw(st.booleans())
        raw = draw(st.sampled_from(CARS[plate])) if wrong else plate
        second = minute * 60 + draw(st.integers(0, 50))
        conf = draw(st.sampled_from((0.55, 0.7, 0.86, 0.9, 0.95)))
        out.append((direction, raw, float(second), conf))
    return out


@st.composite
def visits(draw: st.DrawFn, max_visits: int) -> list[list[Read]]:
    """Per car, non-overlapping visits; each visit the reads of its entry and exit."""
    plan: list[list[Read]] = []
    n = itertools.count()
    for plate in CARS:
        t = draw(st.integers(0, 30))
        for _ in range(draw(st.integers(0, max_visits))):
            stay_min = draw(st.integers(2, 300))
            raw = draw(gate_reads(IN, plate, t)) + draw(gate_reads(OUT, plate, t + stay_min))
            plan.append(
                [
                    Read(f"v{next(n)}", "L01", "cam", d, p, c, at(seconds=sec))
                    for d, p, sec, c in raw
                ]
            )
            t += stay_min + draw(st.integers(3, 300))
    return plan


def run(reads: Iterable[Read]) -> list[Canon]:
    book = SessionBook(grace=GRACE)
    events = feed(book, reads, at(100_000))
    assert not of(events, SentToReview)
    assert book.pending_exits() == []
    assert all(s.status is SessionStatus.CLOSED for s in book.sessions())
    return canonical(book)


def expected_times(plan: list[list[Read]]) -> list[tuple[datetime, datetime]]:
    return sorted(
        (
            min(r.ts for r in visit if r.direction is IN),
            min(r.ts for r in visit if r.direction is OUT),
        )
        for visit in plan
    )


@settings(max_examples=150, deadline=None)
@given(visits(max_visits=1), st.randoms(use_true_random=False))
def test_any_permutation_of_the_reads_gives_identical_sessions(
    plan: list[list[Read]], rnd: random.Random
) -> None:
    """One stay per car, every read of every car shuffled together."""
    reads = [r for visit in plan for r in visit]
    want = run(sorted(reads, key=lambda r: (r.ts, r.read_id)))
    shuffled = rnd.sample(reads, len(reads))
    assert run(shuffled) == want
    assert run(reversed(reads)) == want
    assert sorted((c[3], c[4]) for c in want) == expected_times(plan)  # first reads


@settings(max_examples=150, deadline=None)
@given(visits(max_visits=3), st.randoms(use_true_random=False))
def test_reads_shuffled_within_each_visit_give_identical_sessions(
    plan: list[list[Read]], rnd: random.Random
) -> None:
    """Re-entries: visits arrive in any order, the reads of each visit in any order."""
    ordered = sorted((r for visit in plan for r in visit), key=lambda r: (r.ts, r.read_id))
    want = run(ordered)
    arrivals = [r for visit in rnd.sample(plan, len(plan)) for r in rnd.sample(visit, len(visit))]
    assert run(arrivals) == want
    assert len(want) == len(plan)  # a car that leaves and comes back: one session per visit
    assert sorted((c[3], c[4]) for c in want) == expected_times(plan)


def test_a_better_supported_late_read_changes_an_open_session_plate() -> None:
    book = SessionBook(grace=GRACE)
    events = feed(book, [rd(IN, WRONG, at(0), conf=0.7)], at(0))
    assert of(events, SessionOpened)
    [opened] = book.sessions()
    assert opened.plate == WRONG
    late = feed(book, [rd(IN, RIGHT, at(0, 2), conf=0.9)], at(1))
    assert [type(e) for e in late] == [ReadAbsorbed, SessionRevised]
    assert book.session(opened.session_id).plate == RIGHT
