"""Behaviour versions of the optimizers (no imports: the workflow reads this file without torch).

Bump a class's number when, and only when, a change can alter the numbers it produces (its math,
its defaults, its noise draws). The workflow puts the number into every run's fingerprint, so the
runs of that optimizer, and only those, become stale. Refactors, comments and speedups that keep the
results bitwise-identical leave it alone. The noise classes and NOLAH inherit Muon's step: a change
in optim/muon.py, orthogonalize.py or rank.py alters all four. See docs/optim.md.
"""

# 2 (issue 15): the effective rank is measured on the host (float64 Gram, LAPACK) and the measurement of
# step k is applied at step k + rank_every (the noise trigger, and the eff_rank diagnostics of all four);
# bf16/fp16 parameters: decay and step computed in float32 and rounded once.
ALGORITHM_VERSIONS = {
    "Muon": 2,
    "MuonOrthoNoise": 2,
    "MuonIsotropic": 2,
    "MuonNOLAH": 2,
    "NorMuon": 1,  # optim/normuon.py: inherits Muon's step (a change there alters it too)
    "AdamW": 1,  # optim/adamw.py: torch.optim.AdamW for every parameter
    "DeMo": 1,  # optim/demo.py: compressed data-parallel (DCT top-k), optim/dct.py
}
