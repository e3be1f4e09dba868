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
# 3 (issue 20), the Muon family: Polar Express normalises by ||X|| * 1.02 + 1e-6 (modded-nanogpt's; 1e-7
# before), and cautious decay removes wd * lr * lr_eff of W where it applies (modded-nanogpt's; lr * wd
# before, now weight_decay_scale='lr'). Runs with Newton-Schulz and without cautious decay compute what
# they did (bitwise): they are stale only because the number is per class.
# DeMo 2 (issue 20): delta accumulates lr * g, and a coefficient is the mean over the ranks that sent it
# (bloc97/DeMo); Polar Express's epsilon as above for 'pre'/'post'.
ALGORITHM_VERSIONS = {
    "Muon": 3,
    "MuonOrthoNoise": 3,
    "MuonIsotropic": 3,
    "MuonNOLAH": 3,
    "NorMuon": 2,  # optim/normuon.py: inherits Muon's step (a change there alters it too)
    "AdamW": 1,  # optim/adamw.py: torch.optim.AdamW for every parameter
    "DeMo": 2,  # optim/demo.py: compressed data-parallel (DCT top-k), optim/dct.py
}
