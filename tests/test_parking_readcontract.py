"""The read contract (``parking/readcontract.py``): one decision for the gateway and the
ledger.

The five cases where the two used to disagree (a blank read id, a 40-character plate, a
control character in an id, a duplicate key, NaN in an extra field), the faults that made
one side crash, and a Hypothesis test: on random payloads (valid ones and mutations of
them) the gateway's ``prepare_line`` and the ledger's own preparation of a message accept
exactly the same, and both equal the contract's decision. No broker; SQLite only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citybrain.parking.gateway import prepare_line
from citybrain.parking.ledger import Ledger, OutcomeKind, RecordItem, open_ledger
from citybrain.parking.mqtt import encode_object
from citybrain.parking.passages import Read
from citybrain.parking.readcontract import (
    MAX_PLATE_CHARS,
    DeadReason,
    PayloadError,
    Rejection,
    check_read,
    decode,
    parse_rfc3339,
)

LOT = "L01"  # has a tariff in the shipped configs/tariffs.toml
CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
PLATE = "浙A·3K58Q"
JSON_SPACE = b" \t\r\n"


def body(**fields: Any) -> dict[str, Any]:
    """A valid read object (overridable)."""
    obj: dict[str, Any] = {
        "read_id": "r1",
        "lot_id": LOT,
        "camera_id": "cam-in-1",
        "direction": "in",
        "plate": PLATE,
        "confidence": 0.93,
        "ts": "2026-11-22T08:00:00+08:00",
    }
    obj.update(fields)
    return obj


def raw(**fields: Any) -> bytes:
    return json.dumps(body(**fields), ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    made = open_ledger(f"sqlite:///{tmp_path_factory.mktemp('contract') / 'ledger.db'}")
    yield made
    made.close()


@dataclass(frozen=True)
class Sides:
    """What the contract, the gateway and the ledger made of one payload."""

    contract: Read | Rejection
    gateway: tuple[str, bytes, str] | PayloadError
    ledger: Read | Rejection

    @property
    def accepted(self) -> bool:
        """Whether all three accept (``AssertionError`` when they disagree)."""
        votes = (
            isinstance(self.contract, Read),
            not isinstance(self.gateway, PayloadError),
            isinstance(self.ledger, Read),
        )
        assert len(set(votes)) == 1, f"contract, gateway, ledger disagree: {votes} on {self}"
        return votes[0]


def sides(ledger: Ledger, payload: bytes) -> Sides:
    """The decisions on ``payload`` arriving on ``LOT``'s topic (its line, at the gateway)."""
    try:
        gateway: tuple[str, bytes, str] | PayloadError = prepare_line(
            payload.decode("utf-8", "surrogateescape"), LOT
        )
    except PayloadError as exc:
        gateway = exc
    prepared = ledger._prepare(RecordItem(LOT, payload, NOW))
    mine = prepared.msg if prepared.msg is not None else prepared.rejection
    assert mine is not None
    return Sides(check_read(payload, LOT), gateway, mine)


def reason_of(s: Sides) -> DeadReason:
    """The one reason all three give (``AssertionError`` otherwise)."""
    assert not s.accepted
    assert isinstance(s.contract, Rejection) and isinstance(s.ledger, Rejection)
    assert isinstance(s.gateway, PayloadError) and s.gateway.rejection is not None
    assert s.ledger == s.contract
    assert s.gateway.rejection.reason is s.contract.reason
    text = str(s.gateway)
    assert "\n" not in text and PLATE not in text and "3K58Q" not in text
    assert PLATE not in s.contract.detail
    return s.contract.reason


def recorded(ledger: Ledger, payload: bytes) -> tuple[OutcomeKind, DeadReason | None]:
    """What the service's sink (the ledger) stores for the message."""
    outcome = ledger.record(LOT, payload, NOW, topic=f"citybrain/parking/{LOT}/reads")
    return outcome.kind, outcome.reason


# ---- the five cases -------------------------------------------------------------------------


@pytest.mark.parametrize("blank", [" ", "   ", "\t", "\u3000", " \u2003 "])
@pytest.mark.parametrize("field", ["read_id", "lot_id", "camera_id"])
def test_1_an_id_of_only_whitespace_is_a_bad_field(ledger: Ledger, field: str, blank: str) -> None:
    s = sides(ledger, raw(**{field: blank}))
    assert reason_of(s) is DeadReason.BAD_FIELD
    assert isinstance(s.contract, Rejection) and f"{field}: must not be blank" in s.contract.detail
    if field == "read_id":
        assert s.contract.read_id is None  # no usable id: nothing to acknowledge
    # Spaces inside or around an id with other characters are kept as they are.
    for spaced in ("r 1", " r1", "r1 "):
        ok = sides(ledger, raw(read_id=spaced))
        assert ok.accepted and isinstance(ok.contract, Read) and ok.contract.read_id == spaced


def test_2_a_plate_longer_than_32_characters_is_a_bad_field(ledger: Ledger) -> None:
    long_plate = "浙A" + "1" * 38  # 40 characters
    s = sides(ledger, raw(plate=long_plate))
    assert reason_of(s) is DeadReason.BAD_FIELD
    assert isinstance(s.contract, Rejection) and long_plate not in str(s.gateway)
    assert s.contract.detail == "plate: must be at most 32 characters"
    assert recorded(ledger, raw(read_id="p40", plate=long_plate)) == (
        OutcomeKind.DEAD_LETTER,
        DeadReason.BAD_FIELD,
    )
    edge = "浙A·" + "1" * (MAX_PLATE_CHARS - 3)  # 32 characters, the separator counted
    assert sides(ledger, raw(plate=edge)).accepted
    assert sides(ledger, raw(plate=edge + "1")).accepted is False


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9f", "\ud800"])
@pytest.mark.parametrize("field", ["read_id", "lot_id", "camera_id", "plate"])
def test_3_a_control_character_in_an_id_or_plate_is_a_bad_field(
    ledger: Ledger, field: str, char: str
) -> None:
    value = body()[field]
    payload = json.dumps(body(**{field: value[:2] + char + value[2:]})).encode()  # escaped
    s = sides(ledger, payload)
    assert reason_of(s) is DeadReason.BAD_FIELD
    assert isinstance(s.contract, Rejection)
    assert s.contract.detail == f"{field}: must not contain control characters or lone surrogates"
    # Printable characters that are not plain letters are fine in an id.
    assert sides(ledger, raw(camera_id="门口·东\u200b1")).accepted


@pytest.mark.parametrize(
    "payload",
    [
        b'{"read_id": "r1", "read_id": "r2"' + raw()[len(b'{"read_id": "r1"') :],
        raw()[:-1] + b', "plate": "' + PLATE.encode() + b'"}',  # the same value twice
        raw()[:-1] + b', "lane": 1, "lane": 2}',  # an extra key twice
        raw()[:-1] + b', "meta": {"x": 1, "x": 1}}',  # inside an extra object
    ],
    ids=["read_id", "same_value", "extra", "nested"],
)
def test_4_a_duplicate_key_anywhere_is_malformed_json(ledger: Ledger, payload: bytes) -> None:
    s = sides(ledger, payload)
    assert reason_of(s) is DeadReason.MALFORMED_JSON
    assert isinstance(s.contract, Rejection) and "duplicate key" in s.contract.detail
    assert recorded(ledger, payload) == (OutcomeKind.DEAD_LETTER, DeadReason.MALFORMED_JSON)


@pytest.mark.parametrize(
    "extra",
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "[1, NaN]", '{"a": {"b": Infinity}}'],
)
def test_5_a_non_finite_number_anywhere_is_malformed_json(ledger: Ledger, extra: str) -> None:
    payload = raw()[:-1] + f', "score": {extra}}}'.encode()
    s = sides(ledger, payload)
    assert reason_of(s) is DeadReason.MALFORMED_JSON
    assert recorded(ledger, payload) == (OutcomeKind.DEAD_LETTER, DeadReason.MALFORMED_JSON)
    for token in ("NaN", "1e400"):  # so is the confidence itself
        bad = raw().replace(b"0.93", token.encode())
        assert reason_of(sides(ledger, bad)) is DeadReason.MALFORMED_JSON
    # Finite numbers of any size and precision are fine in an extra field.
    fine = raw()[:-1] + b', "score": [1e-400, -0.0, 123456789012345678901234567890]}'
    assert sides(ledger, fine).accepted


# ---- what used to crash one side, or pass the gateway and die at the service -----------------


def test_a_time_outside_utc_range_is_a_bad_ts(ledger: Ledger) -> None:
    """The ledger raised OverflowError converting it to UTC (a message the service could
    never acknowledge); the gateway forwarded it."""
    for ts in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+00:01"):
        s = sides(ledger, raw(ts=ts))
        assert reason_of(s) is DeadReason.BAD_TS
    assert sides(ledger, raw(ts="9999-12-31T23:59:59+01:00")).accepted
    assert sides(ledger, raw(ts="0001-01-01T00:00:00-00:01")).accepted


def test_numbers_the_gateway_could_not_handle(ledger: Ledger) -> None:
    """A 5,000-digit integer (json raises ValueError) and a confidence too large for a
    float (math.isfinite raised OverflowError) crashed the gateway's feed loop."""
    digits = "9" * 5000
    s = sides(ledger, raw()[:-1] + f', "n": {digits}}}'.encode())
    assert reason_of(s) is DeadReason.MALFORMED_JSON
    s = sides(ledger, raw().replace(b"0.93", b"1" + b"0" * 400))
    assert reason_of(s) is DeadReason.CONFIDENCE_OUT_OF_RANGE


def test_a_payload_over_64_kib_is_refused_by_the_gateway_too(ledger: Ledger) -> None:
    s = sides(ledger, raw(note="x" * 70_000))
    assert reason_of(s) is DeadReason.TOO_LARGE


def test_a_lone_surrogate_in_an_extra_field_is_forwarded_escaped(ledger: Ledger) -> None:
    """The gateway fills a missing lot_id in by re-encoding the object; a lone surrogate
    (a JSON ``\\ud800`` escape) made that encoding fail. It stays escaped now."""
    obj = body(note="\ud800")
    del obj["lot_id"]
    read_id, data, plate = prepare_line(json.dumps(obj), LOT)
    assert (read_id, plate) == ("r1", PLATE) and b"\\ud800" in data
    assert isinstance(check_read(data, LOT), Read)


def test_the_gateway_strips_only_json_whitespace(ledger: Ledger) -> None:
    """The service would refuse a payload starting with a character JSON does not call
    whitespace; so does the gateway now."""
    line = raw().decode()
    assert prepare_line(f" \t{line}\r\n", LOT)[1] == raw()
    for junk in ("\x0b", "\xa0", "\ufeff", "\u3000"):
        with pytest.raises(PayloadError):
            prepare_line(junk + line, LOT)
        assert isinstance(check_read((junk + line).encode(), LOT), Rejection)


def test_times_as_sent_or_in_utc() -> None:
    read = check_read(raw(ts="2026-11-22t08:00:00.5z"), LOT)
    assert isinstance(read, Read) and read.ts == datetime(2026, 11, 22, 8, 0, 0, 500000, UTC)
    sent = check_read(raw(), LOT)
    stored = check_read(raw(), LOT, utc=True)
    assert isinstance(sent, Read) and isinstance(stored, Read)
    assert sent.ts.utcoffset() == timedelta(hours=8) and stored.ts.tzinfo is UTC
    assert sent.ts == stored.ts == datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    with pytest.raises(PayloadError, match="naive_ts"):
        parse_rfc3339("2026-11-22T08:00:00")


def test_several_faults_give_the_first_reason_and_list_all() -> None:
    got = check_read(raw(direction="up", confidence=2, ts="2026-11-22T08:00:00", plate=" "))
    assert isinstance(got, Rejection) and got.reason is DeadReason.BAD_DIRECTION
    assert got.detail == (
        "direction: must be 'in' or 'out'; plate: has no plate characters; "
        "confidence: must be within 0..1; ts: has no UTC offset (add Z or +hh:mm, e.g. +08:00)"
    )
    obj = body(read_id=7)
    del obj["camera_id"]
    got = check_read(json.dumps(obj).encode())
    assert isinstance(got, Rejection) and got.reason is DeadReason.MISSING_FIELD
    assert got.detail == "read_id: must be a string; camera_id: missing" and got.read_id is None


# ---- gateway and ledger agree on random payloads (Hypothesis) ------------------------------


class Tok(str):
    """A JSON fragment written as is (``NaN``, ``1e400``, a 5,000-digit number)."""


def render(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Tok):
        return str(value)
    if isinstance(value, dict):
        parts = [f"{render(k, ascii_only)}:{render(v, ascii_only)}" for k, v in value.items()]
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


PLATE_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
FIELDS = ("read_id", "lot_id", "camera_id", "direction", "plate", "confidence", "ts")
ODD_CHARS = '\x00\x01\x1f\x7f\x85\x9f\ud800\udfff\u200b\u2028\xa0\u3000 \t\n"\\·-'
TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E-400", "-0.0", "0", "1", "1.0"]
TOKENS += ["1.0000001", "-0.01", "1.5", "-2", "true", "false", "null", '"0.9"', "0.5e0"]
TOKENS += ["9" * 30, "9" * 5000]
TIMES = [
    "2026-11-22T08:00:00+08:00",
    "2026-11-22t00:00:00z",
    "2026-11-22 08:00:00.123456789+08:00",
    "2026-11-22T08:00:00",
    "2026-11-22",
    "2026-13-22T08:00:00Z",
    "2026-11-22T08:00:60Z",
    "2026-11-22T08:00:00+25:00",
    "2026-11-22T08:00:00+24:00",
    "2026-11-22T08:00:00-00:00",
    "2026-11-22T08:00:00+0800",
    "2026-11-22T08:00Z",
    "２０２６-11-22T08:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00",
    "0000-01-01T00:00:00Z",
    " 2026-11-22T08:00:00Z",
]

ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,30}", fullmatch=True),
    st.text(max_size=12),
    st.text(alphabet=" \t\u3000\u2003", max_size=3),
    st.integers(min_value=120, max_value=140).map(lambda n: "r" * n),
)
good_plates = st.builds(
    lambda prov, body, style: style(prov + body),
    st.sampled_from(["浙A", "粤B", "京", "AB"]),
    st.text(alphabet=PLATE_CHARS, min_size=1, max_size=8),
    st.sampled_from([str, lambda p: f"{p[:2]}·{p[2:]}", lambda p: p.lower()]),
)
no_plates = st.text(alphabet=" ·-._\u200b\uff0d", min_size=1, max_size=4)  # separators
plates = st.one_of(
    good_plates,
    st.text(max_size=6),
    no_plates,
    st.integers(min_value=30, max_value=42).map(lambda n: "浙A" + "1" * (n - 2)),
)
instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@st.composite
def times(draw: st.DrawFn, odd: bool = True) -> str:
    """RFC 3339 date-times (``odd``: also without an offset, and the odd ones of TIMES)."""
    if odd and draw(st.booleans()):
        return draw(st.sampled_from(TIMES))
    when = draw(instants).astimezone(
        timezone(timedelta(minutes=draw(st.integers(min_value=-1439, max_value=1439))))
    )
    text = when.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "auto"])))
    offset = draw(st.sampled_from(["as is", "Z", "none"] if odd else ["as is", "Z"]))
    if offset == "none":
        return text[:-6]
    return text.replace("+00:00", "Z") if offset == "Z" else text


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(TOKENS).map(Tok),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
bad_values = st.one_of(json_values, ids, plates, times(), st.sampled_from(TOKENS).map(Tok))


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A valid read, or one with a few mutations (fields, keys, text or bytes)."""
    pairs: list[tuple[str, Any]] = [
        ("read_id", draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True))),
        ("lot_id", LOT),
        ("camera_id", draw(st.sampled_from(["cam-in-1", "cam-out-2", "门口1"]))),
        ("direction", draw(st.sampled_from(["in", "out"]))),
        ("plate", draw(good_plates)),
        ("confidence", draw(st.floats(min_value=0.0, max_value=1.0) | st.sampled_from([0, 1]))),
        ("ts", draw(times(odd=False))),
    ]
    kinds = draw(
        st.lists(
            st.sampled_from(
                [
                    *("drop", "retype", "id", "plate", "time", "number", "control", "long"),
                    *("duplicate", "extra", "lot", "order"),
                ]
            ),
            min_size=(size := draw(st.sampled_from([0, 1, 1, 2, 2, 3]))),
            max_size=size,
        )
    )
    for kind in kinds:
        at = draw(st.integers(min_value=0, max_value=len(pairs) - 1)) if pairs else 0
        name = pairs[at][0] if pairs else "read_id"
        if kind == "drop" and pairs:
            del pairs[at]
        elif kind == "retype" and pairs:
            pairs[at] = (name, draw(bad_values))
        elif kind == "id":
            pairs.append((draw(st.sampled_from(["read_id", "camera_id"])), draw(ids)))
            pairs = list(dict(pairs).items())  # the last one wins: no duplicate
        elif kind == "plate":
            pairs = list({**dict(pairs), "plate": draw(plates | no_plates)}.items())
        elif kind == "time":
            pairs = list({**dict(pairs), "ts": draw(times())}.items())
        elif kind == "number":
            pairs = list({**dict(pairs), "confidence": Tok(draw(st.sampled_from(TOKENS)))}.items())
        elif kind == "control" and pairs and isinstance(pairs[at][1], str):
            value = pairs[at][1]
            cut = draw(st.integers(min_value=0, max_value=len(value)))
            odd = draw(st.sampled_from(ODD_CHARS))
            pairs[at] = (name, value[:cut] + odd + value[cut:])
        elif kind == "long" and pairs:
            pairs[at] = (name, "a" * draw(st.sampled_from([31, 32, 33, 40, 128, 129, 70_000])))
        elif kind == "duplicate" and pairs:
            other = draw(st.booleans())
            pairs.append((name, draw(bad_values) if other else pairs[at][1]))
        elif kind == "extra":
            key = draw(st.sampled_from(["lane", "firmware", "meta", "score"]) | st.text(max_size=5))
            pairs.append((key, draw(json_values)))
        elif kind == "lot":
            lot = draw(st.sampled_from(["L02", "lot-1", "l01", None]))
            pairs = [(k, v) for k, v in pairs if k != "lot_id"]
            if lot is not None:
                pairs.append(("lot_id", lot))
        elif kind == "order":
            pairs = draw(st.permutations(pairs))
    ascii_only = draw(st.booleans())
    text = "{" + ",".join(f"{render(k, ascii_only)}:{render(v, ascii_only)}" for k, v in pairs)
    text += "}"
    shape = draw(
        st.sampled_from(["plain"] * 8 + ["truncate", "wrap", "not_object", "bytes", "deep"])
    )
    if shape == "truncate":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    elif shape == "wrap":
        space = st.text(alphabet=" \t\r\n\x0b\x0c\xa0\ufeff\u3000", max_size=3)
        text = draw(space) + text + draw(space)
    elif shape == "not_object":
        text = draw(st.sampled_from([f"[{text}]", "1", '"r1"', "null", "[]", ""]))
    elif shape == "deep":
        text = "[" * 5000 + "]" * 5000
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8
    if shape == "bytes":
        cut = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[cut:]
    return data


def lot_filled(payload: bytes) -> bytes:
    """What the gateway sends for a payload without a lot_id: the object with its lot."""
    obj = decode(payload.strip(JSON_SPACE))
    if isinstance(obj, Rejection) or "lot_id" in obj:
        return payload
    return encode_object({**obj, "lot_id": LOT})


def ledger_decision(ledger: Ledger, payload: bytes) -> Read | Rejection:
    prepared = ledger._prepare(RecordItem(LOT, payload, NOW))
    got = prepared.msg if prepared.msg is not None else prepared.rejection
    assert got is not None
    return got


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(payload=payloads())
def test_gateway_and_ledger_accept_the_same_payloads(ledger: Ledger, payload: bytes) -> None:
    line = payload.decode("utf-8", "surrogateescape")  # the gateway reads text lines
    sent = lot_filled(payload)  # what reaches the service when the gateway accepts
    contract = check_read(sent, LOT)
    ledger_side = ledger_decision(ledger, sent)
    try:
        read_id, forwarded, raw_plate = prepare_line(line, LOT)
    except PayloadError as exc:
        assert isinstance(contract, Rejection), f"the gateway refused a valid read: {exc}"
        assert isinstance(ledger_side, Rejection)
        assert exc.rejection is not None and exc.rejection.reason is contract.reason
        assert "\n" not in str(exc)
        plate = decode(sent)
        if isinstance(plate, dict) and isinstance(plate.get("plate"), str):
            text = plate["plate"]
            others = json.dumps(
                {k: v for k, v in plate.items() if k != "plate"}, ensure_ascii=False
            )
            if len(text) >= 4 and text not in others and text not in contract.detail:
                assert text not in str(exc)  # the plate never appears in the error
    else:
        assert isinstance(contract, Read), f"the gateway accepted {contract}"
        assert (read_id, raw_plate) == (contract.read_id, contract.raw_plate)
        assert forwarded == sent.strip(JSON_SPACE)
        assert ledger_decision(ledger, forwarded) == ledger_side
    # The ledger decides exactly what the contract decides (its reads in UTC).
    assert ledger_side == (
        check_read(sent, LOT, utc=True) if isinstance(contract, Read) else contract
    )
    if isinstance(ledger_side, Read):
        assert ledger_side.ts.tzinfo is UTC and ledger_side.ts == contract.ts  # type: ignore[union-attr]


def test_the_generator_reaches_every_contract_reason() -> None:
    """The random payloads above exercise every reason the contract gives, and valid reads."""
    seen: set[str] = set()

    @settings(max_examples=1500, deadline=None, database=None, derandomize=True)
    @given(payload=payloads())
    def collect(payload: bytes) -> None:
        got = check_read(lot_filled(payload), LOT)
        seen.add(got.reason.value if isinstance(got, Rejection) else "accepted")

    collect()
    expected = {r.value for r in DeadReason} - {"unknown_lot", "read_id_conflict"}
    assert seen >= expected | {"accepted"}, sorted((expected | {"accepted"}) - seen)
