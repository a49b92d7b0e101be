"""Backoff delays: full jitter under an exponential cap that stops at retry_max."""

from __future__ import annotations

import random

import pytest

from agent.retry import Backoff


def test_the_cap_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(1.0, 30.0)
    caps = []
    for _ in range(8):
        backoff.next_delay()
        caps.append(backoff.cap())
    assert caps == [1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize(("initial", "maximum", "multiplier"), [(0.001, 0.001, 2.0), (1.0, 30.0, 2.0), (1e-9, 1e6, 3)])
def test_an_outage_of_any_length_never_overflows(initial, maximum, multiplier) -> None:
    # 2.0 ** 1024 is past the largest float: the exponent must stop growing at the maximum
    backoff = Backoff(initial, maximum, multiplier, random.Random(1))
    for _ in range(5000):
        assert 0 <= backoff.next_delay() <= maximum
    backoff.attempt = 10**9
    assert backoff.cap() == maximum


def test_retry_after_replaces_the_draw_and_is_capped() -> None:
    backoff = Backoff(1.0, 30.0)
    assert backoff.next_delay(5.0) == 5.0
    assert backoff.next_delay(3600.0) == 30.0
