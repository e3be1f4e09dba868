"""The keyword arguments of each optimizer class, with their allowed values (no imports).

The workflow checks every arm of a study against this table before any job is built, without importing
torch (Snakemake may parse the Snakefile where torch is not installed). tests/test_optim_arguments.py
keeps it equal to the classes' signatures: a class or keyword added in optim/ without an entry here fails
that test. `seed` is absent on purpose: the run's seed sets it.

A kind is one of:
  "positive" (finite > 0), "nonnegative" (finite >= 0), "fraction" (finite in [0, 1]),
  "momentum" (finite in [0, 1)), "topk" (finite in (0, 1]), "int>=0", "int>=1", "int1..100", "int1..1024"
  (integers in those ranges, as the classes check), "bool", "betas" (two momenta),
  a tuple of allowed values, or None (any JSON value: the class itself checks it).
"""

MUON = {
    "lr": "positive",
    "momentum": "momentum",
    "nesterov": "bool",
    "weight_decay": "nonnegative",
    "cautious_wd": "bool",
    "weight_decay_scale": (None, "lr", "lr_lr_eff"),
    "update": ("euclidean", "geodesic", "geodesic_scaled"),
    "adjust_lr_fn": (None, "original", "match_rms_adamw"),
    "orthogonalizer": ("newton_schulz", "polar_express", "svd"),
    "ns_steps": "int1..100",
    "ns_precision": ("bf16", "fp32"),
    "eps": "positive",
    "rank_every": "int>=0",
    "shard_across_ranks": "bool",
}

NOISE = {
    "alpha": "nonnegative",
    "schedule": ("constant", "exponential", "linear"),
    "alpha_end": "nonnegative",
    "schedule_steps": "int>=1",
    "half_life": "positive",
    "noise_warmup_steps": "int>=0",
    "rank_threshold": "fraction",
    "persist_noise": "bool",
}

OPTIMIZER_ARGUMENTS = {
    "Muon": MUON,
    "MuonOrthoNoise": {**MUON, **NOISE, "noise_method": ("qr", "polar"), "reortho_steps": "int>=0"},
    "MuonIsotropic": {**MUON, **NOISE, "reortho_steps": "int>=0"},
    "MuonNOLAH": {**MUON, "gating": "bool", "percentile": "fraction", "percentile_scale": "fraction",
                  "sigmoid_projection": "bool"},
    "NorMuon": {**MUON, "beta2": "momentum"},
    # compressed data-parallel (optim/demo.py): DCT top-k of each rank's momentum, exchanged by all_gather
    "DeMo": {
        "lr": "nonnegative", "compression_decay": "momentum", "chunk": "int1..1024", "topk": "topk",
        "sign": "bool", "value_dtype": ("float32", "bfloat16"), "orthogonalize": ("none", "pre", "post"),
        "pre_update": ("sign", "rescale", "raw"), "weight_decay": "nonnegative",
        "lr_scaled_delta": "bool", "mean_over_senders": "bool",
        "adjust_lr_fn": (None, "original", "match_rms_adamw"),
        "orthogonalizer": ("newton_schulz", "polar_express", "svd"), "ns_steps": "int1..100",
        "ns_precision": ("bf16", "fp32"), "eps": "positive",
    },
}

ADAMW_ARGUMENTS = {
    "lr": "positive",
    "betas": "betas",
    "eps": "positive",
    "weight_decay": "nonnegative",
}
