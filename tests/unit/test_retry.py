import random

from recsvc.retry import Backoff, CircuitBreaker


def test_backoff_grows_to_the_cap_and_resets() -> None:
    backoff = Backoff(base_s=0.1, cap_s=0.4, rng=random.Random(0))
    ceilings = [0.1, 0.2, 0.4, 0.4]
    delays = [backoff.next_delay() for _ in ceilings]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_breaker_opens_for_the_cooldown_then_lets_one_probe() -> None:
    now = [0.0]
    breaker = CircuitBreaker(cooldown_s=1.0, threshold=1, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    now[0] = 1.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # the others wait for it
    breaker.success()
    assert breaker.allow() and breaker.allow()


def test_breaker_opens_only_after_failures_in_a_row_and_a_failed_probe_reopens_it() -> None:
    now = [0.0]
    breaker = CircuitBreaker(cooldown_s=1.0, threshold=3, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    breaker.success()  # the count starts again
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    breaker.failure()  # the third in a row
    assert not breaker.allow()
    now[0] = 1.5
    assert breaker.allow()  # the probe
    breaker.failure()
    assert not breaker.allow()  # open again after one failed probe
