"""Noise-scale schedules: alpha_t for the optimizer step t (1-based), with a warm-up without noise.

The schedule's clock starts when the noise starts: tau = t - 1 - noise_warmup_steps, so the first
noisy step uses alpha itself.

- constant:     alpha
- exponential:  alpha * (alpha_end / alpha) ** (tau / schedule_steps)  (end-value form), or
                alpha * 0.5 ** (tau / half_life)                       (half-life form);
                it keeps decaying after schedule_steps, as the seed's alpha * 0.1 ** (t / 1000) does
                (that is alpha_end = alpha / 10, schedule_steps = 1000).
- linear:       alpha + (alpha_end - alpha) * min(tau / schedule_steps, 1), then alpha_end.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "exponential", "linear")


def _bad(name, value, allowed):
    return ValueError(f"{name}={value!r} is not allowed; {allowed}")


@dataclass(frozen=True)
class AlphaSchedule:
    alpha: float
    schedule: str = "constant"
    alpha_end: float | None = None
    schedule_steps: int = 1000
    half_life: float | None = None
    noise_warmup_steps: int = 0

    def __post_init__(self):
        _real = (int, float)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, _real) or not self.alpha >= 0:
            raise _bad("alpha", self.alpha, "use a number >= 0")
        if self.schedule not in SCHEDULES:
            raise _bad("schedule", self.schedule, f"use one of {list(SCHEDULES)}")
        if isinstance(self.schedule_steps, bool) or not isinstance(self.schedule_steps, int) or self.schedule_steps < 1:
            raise _bad("schedule_steps", self.schedule_steps, "use an int >= 1")
        if (
            isinstance(self.noise_warmup_steps, bool)
            or not isinstance(self.noise_warmup_steps, int)
            or self.noise_warmup_steps < 0
        ):
            raise _bad("noise_warmup_steps", self.noise_warmup_steps, "use an int >= 0")
        if self.alpha_end is not None and (
            isinstance(self.alpha_end, bool) or not isinstance(self.alpha_end, _real) or not self.alpha_end >= 0
        ):
            raise _bad("alpha_end", self.alpha_end, "use a number >= 0 or None")
        if self.half_life is not None and (
            isinstance(self.half_life, bool) or not isinstance(self.half_life, _real) or not self.half_life > 0
        ):
            raise _bad("half_life", self.half_life, "use a number > 0 or None")
        if self.schedule == "constant":
            if self.alpha_end is not None or self.half_life is not None:
                raise _bad(
                    "alpha_end/half_life", (self.alpha_end, self.half_life), "schedule='constant' takes neither"
                )
        elif self.schedule == "linear":
            if self.alpha_end is None:
                raise _bad("alpha_end", None, "schedule='linear' needs alpha_end")
            if self.half_life is not None:
                raise _bad("half_life", self.half_life, "schedule='linear' takes no half_life")
        else:  # exponential
            if (self.alpha_end is None) == (self.half_life is None):
                raise _bad(
                    "alpha_end/half_life",
                    (self.alpha_end, self.half_life),
                    "schedule='exponential' needs exactly one of alpha_end (end-value form) or half_life",
                )
            if self.alpha_end is not None and not (self.alpha_end > 0 and self.alpha > 0):
                raise _bad("alpha_end", self.alpha_end, "the exponential end-value form needs alpha > 0 and alpha_end > 0")

    def __call__(self, step: int) -> float:
        """alpha for optimizer step `step` (1-based); 0.0 during the noise warm-up."""
        if step <= self.noise_warmup_steps:
            return 0.0
        tau = step - 1 - self.noise_warmup_steps
        if self.schedule == "constant":
            return float(self.alpha)
        if self.schedule == "linear":
            frac = min(tau / self.schedule_steps, 1.0)
            return float(self.alpha + (self.alpha_end - self.alpha) * frac)
        if self.half_life is not None:
            return float(self.alpha * 0.5 ** (tau / self.half_life))
        return float(self.alpha * (self.alpha_end / self.alpha) ** (tau / self.schedule_steps))
