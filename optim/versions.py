"""Behaviour versions of the optimizers (no imports: the workflow reads this file without torch).

Bump a class's number when, and only when, a change can alter the numbers it produces (its math,
its defaults, its noise draws). The workflow puts the number into every run's fingerprint, so the
runs of that optimizer, and only those, become stale. Refactors, comments and speedups that keep the
results bitwise-identical leave it alone. The noise classes and NOLAH inherit Muon's step: a change
in optim/muon.py, orthogonalize.py or rank.py alters all four. See docs/optim.md.
"""

ALGORITHM_VERSIONS = {
    "Muon": 1,
    "MuonOrthoNoise": 1,
    "MuonIsotropic": 1,
    "MuonNOLAH": 1,
    "DeMo": 1,
}
