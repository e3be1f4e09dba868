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
# DeMo 2 (issue 20): delta accumulates lr * g, and a coefficient is the mean over the ranks that sent it
# (bloc97/DeMo); Polar Express's epsilon as above for 'pre'/'post'.
ALGORITHM_VERSIONS = {
    "Muon": 2,
    "MuonOrthoNoise": 2,
    "MuonIsotropic": 2,
    "MuonNOLAH": 2,
    "NorMuon": 1,  # optim/normuon.py: inherits Muon's step (a change there alters it too)
    "AdamW": 1,  # optim/adamw.py: torch.optim.AdamW for every parameter
    "DeMo": 2,  # optim/demo.py: compressed data-parallel (DCT top-k), optim/dct.py
}

# Behaviour versions of features a run may or may not use, so that a change to one re-runs only the runs
# that use it (a class-wide bump would re-run every OrthoNoise run for a change to Polar Express).
# name: (version, the optimizer.muon settings that select it: a run uses the feature when its resolved
# settings hold all of them). A feature's number enters the fingerprint of the runs that use it only.
FEATURE_VERSIONS = {
    # issue 20: Polar Express normalises by ||X|| * 1.02 + 1e-6 (modded-nanogpt's; 1e-7 before)
    "polar_express": (2, {"orthogonalizer": "polar_express"}),
    # issue 20: cautious decay removes wd * lr * lr_eff of W where it applies (modded-nanogpt's; lr * wd
    # before, still there as weight_decay_scale: lr)
    "cautious_wd": (2, {"cautious_wd": True}),
}
