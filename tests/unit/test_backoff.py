"""ingest.ops.backoff: the one retry policy — exponential, capped, jittered with a floor."""

from __future__ import annotations

import random

import pytest

from ingest.ops.backoff import Backoff


class TestBackoff:
    """Attempt n waits within [ceiling·(1 - jitter), ceiling], ceiling = min(cap, base·2ⁿ⁻¹)."""

    @pytest.mark.parametrize(
        ("attempt", "ceiling"), [(0, 0.1), (1, 0.1), (2, 0.2), (4, 0.8), (10, 2.0), (500, 2.0)]
    )
    def test_delays_stay_within_the_jitter_band(self, attempt: int, ceiling: float) -> None:
        backoff = Backoff(base=0.1, cap=2.0, rng=random.Random(attempt))
        delays = [backoff.delay(attempt) for _ in range(300)]
        assert backoff.ceiling(attempt) == pytest.approx(ceiling)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling * 0.3  # random, not a fixed point

    def test_equal_jitter_never_spins(self) -> None:
        """However unlucky the draw, a retry waits at least half its ceiling."""
        backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
        assert min(backoff.delay(1) for _ in range(1000)) >= 0.5

    def test_no_jitter_is_deterministic(self) -> None:
        backoff = Backoff(base=0.5, cap=3.0, jitter=0.0)
        assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]

    def test_fixed_period_comes_up_to_its_spread_sooner(self) -> None:
        backoff = Backoff.fixed(900.0, spread=0.1)
        delays = [backoff.delay(n) for n in (1, 2, 50)]
        assert all(810.0 <= d <= 900.0 for d in delays)

    @pytest.mark.parametrize(
        "kwargs", [{"base": -1.0}, {"cap": -0.1}, {"jitter": 1.5}, {"jitter": -0.1}]
    )
    def test_invalid_policy_is_refused(self, kwargs: dict[str, float]) -> None:
        values = {"base": 1.0, "cap": 2.0, "jitter": 0.5} | kwargs
        with pytest.raises(ValueError, match="invalid backoff"):
            Backoff(values["base"], values["cap"], values["jitter"])
