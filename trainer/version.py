"""Behaviour version of the trainer (no imports: the workflow reads this file without torch).

Bump it when, and only when, a change can alter the numbers a run produces (model init or
architecture, data sampling, the validation set, the lr schedule, loss or metric definitions).
The study puts it into every run's fingerprint, so a bump makes every run stale. Refactors, speedups
and logging changes that keep results bitwise-identical on CPU leave it alone.
"""

TRAINER_VERSION = 1
