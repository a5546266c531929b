"""The pipeline's one retry policy: exponential backoff with jitter.

Attempt n (1, 2, …) waits a random time in `[ceiling·(1 - jitter), ceiling]`, where
`ceiling = min(cap, base·2ⁿ⁻¹)`. The default jitter of 0.5 ("equal jitter") keeps a floor under
every wait — a client retrying a server or broker that is down never spins, whatever the random
draw — while still spreading the retries of many mailboxes or workers that failed together.
(Full jitter, `[0, ceiling]`, can draw near-zero waits in a row; a fixed delay makes every client
that lost the same server come back at the same instant.)

A fixed period with a spread, such as the retry of refused credentials, is the same policy with
`base == cap` and a small jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_MAX_DOUBLINGS = 30
"""2³⁰ · base exceeds any sensible cap; also keeps the float finite."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter (see the module docstring)."""

    base: float = 0.2
    """Ceiling of the first retry's wait, seconds."""
    cap: float = 30.0
    """No wait is longer than this, seconds."""
    jitter: float = 0.5
    """Share of the ceiling that is random: 0 = no jitter, 1 = full jitter."""
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"invalid backoff {self.base=}, {self.cap=}, {self.jitter=}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry `attempt` (1-based)."""
        doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
        return min(self.cap, self.base * 2.0**doublings)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (1-based)."""
        ceiling = self.ceiling(attempt)
        return self.rng.uniform(ceiling * (1.0 - self.jitter), ceiling)

    @classmethod
    def fixed(cls, seconds: float, *, spread: float = 0.1) -> Backoff:
        """`seconds` every time, up to `spread` of it sooner (so failures that happened together
        are not retried together)."""
        return cls(base=seconds, cap=seconds, jitter=spread)
