"""Specification of the failed-authentication limiter: per source, per subject, bounded."""

from __future__ import annotations

import pytest

from pathwarden.identity.ratelimit import FailureLimiter, retry_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(limiter: FailureLimiter, times: int, source: str, subject: str | None = None) -> None:
    for _ in range(times):
        assert limiter.check(source, subject) is None
        limiter.failed(source, subject)


def test_a_source_under_the_limit_may_keep_trying(clock: Clock) -> None:
    limiter = FailureLimiter(clock=clock)

    fail(limiter, 9, "10.0.0.1", "ci-test")

    assert limiter.check("10.0.0.1", "ci-test") is None


def test_ten_failures_in_a_minute_block_the_source_until_the_window_passes(clock: Clock) -> None:
    limiter = FailureLimiter(clock=clock)
    for second in range(10):
        clock.now = 1000.0 + second
        limiter.failed("10.0.0.1", f"user-{second}")

    clock.now = 1020.0
    assert limiter.check("10.0.0.1", "ci-test") == pytest.approx(40.0)
    clock.now = 1059.5
    assert limiter.check("10.0.0.1", "ci-test") == pytest.approx(0.5)
    clock.now = 1060.0
    assert limiter.check("10.0.0.1", "ci-test") is None


def test_a_blocked_source_is_refused_even_before_checking_a_correct_credential(
    clock: Clock,
) -> None:
    limiter = FailureLimiter(clock=clock)
    fail(limiter, 10, "10.0.0.1")

    # The caller asks before verifying; a valid token changes nothing while blocked.
    assert limiter.check("10.0.0.1", "ci-deploy") is not None


def test_other_sources_are_not_affected_by_a_blocked_one(clock: Clock) -> None:
    limiter = FailureLimiter(clock=clock)
    fail(limiter, 10, "10.0.0.1")

    assert limiter.check("10.0.0.2") is None


def test_twenty_failures_for_one_subject_from_many_sources_block_that_subject(
    clock: Clock,
) -> None:
    limiter = FailureLimiter(clock=clock)
    for index in range(20):
        fail(limiter, 1, f"10.0.0.{index}", "ci-deploy")

    assert limiter.check("10.9.9.9", "ci-deploy") == pytest.approx(60.0)
    assert limiter.check("10.9.9.9", "ci-test") is None
    assert limiter.check("10.9.9.9") is None


def test_the_longer_of_two_blocks_is_reported(clock: Clock) -> None:
    limiter = FailureLimiter(per_source=2, per_subject=2, clock=clock)
    for moment, source, subject in [(0, "a", "y"), (10, "a", "z"), (20, "b", "x"), (30, "c", "x")]:
        clock.now = 1000.0 + moment
        limiter.failed(source, subject)

    assert limiter.check("a", "x") == pytest.approx(50.0)  # x: until t=80
    assert limiter.check("a", "w") == pytest.approx(30.0)  # a: until t=60
    assert limiter.check("d", "x") == pytest.approx(50.0)


def test_a_success_forgets_the_failures_of_its_source_and_subject(clock: Clock) -> None:
    limiter = FailureLimiter(clock=clock)
    fail(limiter, 9, "10.0.0.1", "ci-test")

    limiter.succeeded("10.0.0.1", "ci-test")
    fail(limiter, 9, "10.0.0.1", "ci-test")

    assert limiter.check("10.0.0.1", "ci-test") is None


def test_the_window_slides(clock: Clock) -> None:
    limiter = FailureLimiter(per_source=3, window=60, clock=clock)
    for moment in (0, 30, 50):
        clock.now = 1000.0 + moment
        limiter.failed("s", None)

    clock.now = 1055.0
    assert limiter.check("s") == pytest.approx(5.0)
    clock.now = 1060.0
    assert limiter.check("s") is None  # the failure at t=0 aged out
    limiter.failed("s", None)
    assert limiter.check("s") == pytest.approx(30.0)  # now the one at t=30 is the oldest


def test_failures_that_aged_out_free_their_memory(clock: Clock) -> None:
    limiter = FailureLimiter(clock=clock)
    for index in range(1000):
        limiter.failed(f"10.0.{index // 256}.{index % 256}", f"user-{index}")
    assert limiter.tracked() == (1000, 1000)

    clock.now += 61

    assert limiter.tracked() == (0, 0)


def test_the_tables_are_capped_by_evicting_the_least_recent_failures(clock: Clock) -> None:
    limiter = FailureLimiter(per_source=2, max_entries=100, clock=clock)
    fail(limiter, 2, "first")
    for index in range(100):
        clock.now += 0.01
        limiter.failed(f"spray-{index}", f"user-{index}")

    assert limiter.tracked() == (100, 100)
    assert limiter.check("first") is None  # evicted
    assert limiter.check("spray-99") is None  # one failure of two


def test_a_repeat_offender_stays_in_the_table_over_newer_keys(clock: Clock) -> None:
    limiter = FailureLimiter(per_source=2, max_entries=3, clock=clock)
    limiter.failed("a", None)
    limiter.failed("b", None)
    limiter.failed("c", None)
    limiter.failed("a", None)  # a is now the most recent
    limiter.failed("d", None)  # evicts b

    assert limiter.check("a") is not None
    assert limiter.tracked() == (3, 0)


def test_the_refusal_says_when_to_retry() -> None:
    assert retry_message(41.2) == "too many failed authentications; retry in 42 seconds"
    assert retry_message(0.2) == "too many failed authentications; retry in 1 second"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FailureLimiter(per_source=0)
