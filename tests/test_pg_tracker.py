"""Specification of ResponseTracker (protocols/postgres/tracker.py).

Each scenario is a table: the requests the gateway forwarded (a unit, and a
label when the request is tracked), the backend messages in order, and the
outcome per label: command tag, row count, error code, skipped. The order in
which statements complete is part of the outcome, since the audit writes them
in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pathwarden.protocols.postgres import messages as m
from pathwarden.protocols.postgres.errors import RemoteProtocolError
from pathwarden.protocols.postgres.tracker import ResponseTracker, Tracked, Unit

Q, P, B, D, E, C, S, F = (Unit.QUERY, Unit.PARSE, Unit.BIND, Unit.DESCRIBE, Unit.EXECUTE,
                          Unit.CLOSE, Unit.SYNC, Unit.FUNCTION)

ROW = m.DataRow.from_values([b"1"])
RD = m.RowDescription((m.FieldDescription("x", 0, 0, 23, 4, -1, 0),))
RFQ = m.ReadyForQuery("I")
RFQ_T = m.ReadyForQuery("T")
RFQ_E = m.ReadyForQuery("E")


def cc(tag: str) -> m.CommandComplete:
    return m.CommandComplete(tag)


def err(code: str, text: str = "boom") -> m.ErrorResponse:
    return m.ErrorResponse.build(code, text)


@dataclass(frozen=True)
class Outcome:
    tag: str | None = None
    rows: int = 0
    error_code: str | None = None
    skipped: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: list[tuple[Unit, str | None]]
    responses: list[m.Message]
    outcomes: dict[str, Outcome]
    #: Labels in completion order (default: the order of ``outcomes``).
    order: list[str] | None = None


def run(
    requests: list[tuple[Unit, str | None]], responses: list[m.Message], *,
    undecoded: bool = False,
) -> tuple[ResponseTracker, dict[str, Tracked], list[str]]:
    """Expect ``requests`` then attribute ``responses``, as messages or as raw frames."""
    tracker = ResponseTracker()
    tracked: dict[str, Tracked] = {}
    for seq, (unit, label) in enumerate(requests):
        t = None
        if label is not None:
            t = tracked[label] = Tracked(seq, unit.value, label)
        tracker.expect(unit, t)
    completed: list[str] = []
    for msg in responses:
        if undecoded:
            done = tracker.on_frame(ord(msg.TYPE), memoryview(msg.encode())[5:])
        else:
            done = tracker.on_backend(msg)
        completed += [t.text for t in done]
    return tracker, tracked, completed


SCENARIOS = [
    Scenario(
        "simple query with rows",
        [(Q, "q")], [RD, ROW, ROW, ROW, cc("SELECT 3"), RFQ],
        {"q": Outcome("SELECT 3", 3)},
    ),
    Scenario(
        "rows counted when the tag carries no count",
        [(Q, "q")], [RD, ROW, ROW, cc("SHOW"), RFQ],
        {"q": Outcome("SHOW", 2)},
    ),
    Scenario(
        "statement without rows",
        [(Q, "q")], [cc("CREATE TABLE"), RFQ],
        {"q": Outcome("CREATE TABLE", 0)},
    ),
    Scenario(
        "multi-statement query sums rows and keeps the last tag",
        [(Q, "q")],
        [RD, ROW, ROW, cc("SELECT 2"), cc("INSERT 0 4"), cc("BEGIN"), RD, ROW, cc("SELECT 1"),
         RFQ_T],
        {"q": Outcome("SELECT 1", 7)},
    ),
    Scenario(
        "INSERT RETURNING counts rows from the tag, not twice",
        [(Q, "q")], [RD, ROW, ROW, cc("INSERT 0 2"), RFQ],
        {"q": Outcome("INSERT 0 2", 2)},
    ),
    Scenario(
        "error after the first statement of a multi-statement query",
        [(Q, "q")], [cc("INSERT 0 1"), RD, ROW, err("22012"), RFQ_E],
        {"q": Outcome("INSERT 0 1", 2, "22012")},
    ),
    Scenario(
        "consecutive simple queries",
        [(Q, "a"), (Q, "b")], [cc("SELECT 0"), RFQ, RD, ROW, cc("SELECT 1"), RFQ],
        {"a": Outcome("SELECT 0", 0), "b": Outcome("SELECT 1", 1)},
    ),
    Scenario(
        "extended protocol Parse/Bind/Describe/Execute/Sync",
        [(P, "p"), (B, "b"), (D, "d"), (E, "e"), (S, "s")],
        [m.ParseComplete(), m.BindComplete(), RD, ROW, ROW, cc("SELECT 2"), RFQ],
        {"p": Outcome(), "b": Outcome(), "d": Outcome(), "e": Outcome("SELECT 2", 2),
         "s": Outcome()},
    ),
    Scenario(
        "Describe of a statement ends at NoData after ParameterDescription",
        [(P, "p"), (D, "d"), (S, "s")],
        [m.ParseComplete(), m.ParameterDescription((23,)), m.NoData(), RFQ],
        {"p": Outcome(), "d": Outcome(), "s": Outcome()},
    ),
    Scenario(
        "Close ends at CloseComplete",
        [(C, "c"), (S, "s")], [m.CloseComplete(), RFQ],
        {"c": Outcome(), "s": Outcome()},
    ),
    Scenario(
        "error in the middle of a pipeline skips the units before Sync",
        [(P, "p"), (B, "b1"), (E, "e1"), (B, "b2"), (E, "e2"), (D, "d2"), (S, "s")],
        [m.ParseComplete(), m.BindComplete(), ROW, err("23505"), RFQ_E],
        {"p": Outcome(), "b1": Outcome(), "e1": Outcome(None, 1, "23505"),
         "b2": Outcome(skipped=True), "e2": Outcome(skipped=True),
         "d2": Outcome(skipped=True), "s": Outcome()},
    ),
    Scenario(
        "a Query queued behind a failed extended unit is skipped too",
        [(B, "b"), (E, "e"), (Q, "q"), (S, "s")],
        [m.BindComplete(), err("42P01"), RFQ],
        {"b": Outcome(), "e": Outcome(None, 0, "42P01"), "q": Outcome(skipped=True),
         "s": Outcome()},
    ),
    Scenario(
        "the segment after Sync runs normally after an error before it",
        [(P, "p1"), (B, "b1"), (E, "e1"), (S, "s1"), (P, "p2"), (B, "b2"), (E, "e2"),
         (S, "s2")],
        [err("42601"), RFQ, m.ParseComplete(), m.BindComplete(), ROW, cc("SELECT 1"), RFQ],
        {"p1": Outcome(None, 0, "42601"), "b1": Outcome(skipped=True),
         "e1": Outcome(skipped=True), "s1": Outcome(), "p2": Outcome(), "b2": Outcome(),
         "e2": Outcome("SELECT 1", 1), "s2": Outcome()},
    ),
    Scenario(
        "error raised at Sync (deferred constraint at commit) belongs to the Sync",
        [(B, "b"), (E, "e"), (S, "s")],
        [m.BindComplete(), cc("INSERT 0 1"), err("23503"), RFQ],
        {"b": Outcome(), "e": Outcome("INSERT 0 1", 1), "s": Outcome(None, 0, "23503")},
    ),
    Scenario(
        "PortalSuspended ends one Execute, the next Execute continues",
        [(B, "b"), (E, "e1"), (E, "e2"), (S, "s")],
        [m.BindComplete(), ROW, ROW, m.PortalSuspended(), ROW, cc("SELECT 1"), RFQ_T],
        {"b": Outcome(), "e1": Outcome("(suspended)", 2), "e2": Outcome("SELECT 1", 1),
         "s": Outcome()},
    ),
    Scenario(
        "COPY FROM STDIN inside a simple query",
        [(Q, "q")], [m.CopyInResponse(0, (0, 0)), cc("COPY 3"), RFQ],
        {"q": Outcome("COPY 3", 3)},
    ),
    Scenario(
        "COPY TO STDOUT inside a simple query",
        [(Q, "q")],
        [m.CopyOutResponse(0, (0,)), m.CopyData(b"1\n"), m.CopyData(b"2\n"), m.CopyDone(),
         cc("COPY 2"), RFQ],
        {"q": Outcome("COPY 2", 2)},
    ),
    Scenario(
        "COPY through Execute ends the Execute at CommandComplete",
        [(B, "b"), (E, "e"), (S, "s")],
        [m.BindComplete(), m.CopyOutResponse(0, ()), m.CopyData(b"x\n"), m.CopyDone(),
         cc("COPY 1"), RFQ],
        {"b": Outcome(), "e": Outcome("COPY 1", 1), "s": Outcome()},
    ),
    Scenario(
        "failed COPY FROM STDIN",
        [(Q, "q")], [m.CopyInResponse(0, ()), err("22P02"), RFQ_E],
        {"q": Outcome(None, 0, "22P02")},
    ),
    Scenario(
        "EmptyQueryResponse for an empty simple query",
        [(Q, "q")], [m.EmptyQueryResponse(), RFQ],
        {"q": Outcome()},
    ),
    Scenario(
        "EmptyQueryResponse ends an Execute",
        [(P, "p"), (B, "b"), (E, "e"), (S, "s")],
        [m.ParseComplete(), m.BindComplete(), m.EmptyQueryResponse(), RFQ],
        {"p": Outcome(), "b": Outcome(), "e": Outcome(), "s": Outcome()},
    ),
    Scenario(
        "FunctionCall ends at ReadyForQuery",
        [(F, "f")], [m.FunctionCallResponse(b"42"), RFQ],
        {"f": Outcome()},
    ),
    Scenario(
        "failed FunctionCall keeps its error until ReadyForQuery",
        [(F, "f"), (Q, "q")], [err("42883"), RFQ, cc("SELECT 0"), RFQ],
        {"f": Outcome(None, 0, "42883"), "q": Outcome("SELECT 0", 0)},
    ),
    Scenario(
        "untracked units are answered but not reported",
        [(P, None), (B, None), (E, "e"), (S, None)],
        [m.ParseComplete(), m.BindComplete(), cc("UPDATE 4"), RFQ],
        {"e": Outcome("UPDATE 4", 4)},
    ),
    Scenario(
        "untracked units are skipped silently after an error",
        [(P, None), (B, None), (E, "e"), (S, None)],
        [err("42601"), RFQ],
        {"e": Outcome(skipped=True)},
    ),
]


def _check(
    scenario: Scenario, responses: list[m.Message], *, undecoded: bool = False,
) -> ResponseTracker:
    tracker, tracked, completed = run(scenario.requests, responses, undecoded=undecoded)
    assert completed == (scenario.order or list(scenario.outcomes))
    for label, want in scenario.outcomes.items():
        t = tracked[label]
        got = Outcome(t.tag, t.rows, t.error_code, t.skipped)
        assert got == want, label
        assert t.pending_rows == 0, label
    assert len(tracker) == 0
    assert tracker.head() is None
    assert not tracker.in_copy
    return tracker


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_responses_are_attributed_to_the_requests_that_caused_them(scenario: Scenario) -> None:
    _check(scenario, scenario.responses)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_undecoded_frames_are_attributed_like_decoded_messages(scenario: Scenario) -> None:
    _check(scenario, scenario.responses, undecoded=True)


def test_malformed_command_complete_frame_is_a_protocol_error() -> None:
    tracker = ResponseTracker()
    tracker.expect(Q, Tracked(1, "query", "q"))
    with pytest.raises(RemoteProtocolError):
        tracker.on_frame(ord("C"), b"SELECT 1")


def test_malformed_error_response_frame_is_a_protocol_error() -> None:
    tracker = ResponseTracker()
    tracker.expect(Q, Tracked(1, "query", "q"))
    with pytest.raises(RemoteProtocolError):
        tracker.on_frame(ord("E"), b"SERROR\x00")


ASYNC = [
    m.NoticeResponse({"S": "NOTICE", "M": "note"}),
    m.NotificationResponse(42, "chan", "payload"),
    m.ParameterStatus("TimeZone", "UTC"),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("extra", ASYNC, ids=lambda x: type(x).__name__)
def test_asynchronous_messages_anywhere_do_not_disturb_attribution(
    scenario: Scenario, extra: m.Message,
) -> None:
    responses: list[m.Message] = [extra]
    for msg in scenario.responses:
        responses += [msg, extra]
    _check(scenario, responses)


def test_error_message_is_recorded_with_its_code() -> None:
    _, tracked, _ = run([(Q, "q")], [err("42501", "permission denied"), RFQ])
    assert (tracked["q"].error, tracked["q"].error_code) == ("permission denied", "42501")


def test_the_first_error_of_a_request_is_kept() -> None:
    _, tracked, _ = run([(F, "f")], [err("XX000", "first"), err("XX001", "second"), RFQ])
    assert (tracked["f"].error, tracked["f"].error_code) == ("first", "XX000")


def test_copy_mode_is_tracked_until_the_copy_ends() -> None:
    tracker = ResponseTracker()
    tracker.expect(Q, Tracked(1, "query", "COPY t FROM STDIN"))
    tracker.on_backend(m.CopyInResponse(0, ()))
    assert tracker.in_copy
    tracker.on_backend(cc("COPY 0"))
    assert not tracker.in_copy
    tracker.on_backend(m.CopyBothResponse(0, ()))
    assert tracker.in_copy
    tracker.on_backend(err("57014"))
    assert not tracker.in_copy


def test_head_is_the_request_the_next_answer_belongs_to() -> None:
    tracker = ResponseTracker()
    first, second = Tracked(1, "parse", "p"), Tracked(2, "execute", "e")
    tracker.expect(P, first)
    tracker.expect(E, second)
    assert tracker.head() is first
    tracker.on_backend(m.ParseComplete())
    assert tracker.head() is second
    assert len(tracker) == 1


def test_denial_is_preserved_while_the_servers_answer_is_attributed() -> None:
    denial = m.ErrorResponse.build("42501", "pathwarden: DELETE denied")
    denied = Tracked(1, "query", "SELECT 1 /* substituted */", denial=denial)
    tracker = ResponseTracker()
    tracker.expect(Q, denied)
    assert tracker.head() is denied
    assert tracker.head().denial is denial  # type: ignore[union-attr]
    done = [*tracker.on_backend(err("42501", "substituted statement failed")),
            *tracker.on_backend(RFQ)]
    assert done == [denied]
    assert denied.denial is denial
    assert denied.error_code == "42501"


def test_context_and_extra_are_returned_untouched() -> None:
    ctx = object()
    t = Tracked(1, "query", "q", context=ctx, extra={"k": 1})
    tracker = ResponseTracker()
    tracker.expect(Q, t)
    assert [*tracker.on_backend(cc("SELECT 0")), *tracker.on_backend(RFQ)] == [t]
    assert t.context is ctx
    assert t.extra == {"k": 1}


@pytest.mark.parametrize("msg", [*ASYNC, RFQ, err("57P01"), ROW, cc("SELECT 1")])
def test_messages_with_nothing_pending_are_ignored(msg: m.Message) -> None:
    tracker = ResponseTracker()
    assert tracker.on_backend(msg) == []
    assert len(tracker) == 0


def test_ready_for_query_reports_units_that_never_got_an_answer_as_skipped() -> None:
    # Defensive: a unit queued before the Sync that got no answer of its own.
    _, tracked, completed = run([(D, "d"), (S, "s")], [RFQ])
    assert completed == ["d", "s"]
    assert tracked["d"].skipped
    assert not tracked["s"].skipped


def test_a_tag_ending_in_a_non_ascii_digit_does_not_crash_the_tracker() -> None:
    _, tracked, _ = run([(Q, "q")], [RD, ROW, cc("SELECT ²"), RFQ])
    assert tracked["q"].rows == 1
