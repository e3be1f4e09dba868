"""The Muon family of optimizers (pure PyTorch). See docs/optim.md."""

from .adamw import AdamW
from .demo import DeMo
from .factory import DEFAULT_ADAMW_PATTERNS, OPTIMIZERS, MuonWithAdamW, build_optimizer, split_parameters
from .muon import DIAGNOSTIC_KEYS, Muon
from .nolah import MuonNOLAH
from .normuon import NorMuon
from .orthonoise import MuonIsotropic, MuonOrthoNoise
from .versions import ALGORITHM_VERSIONS

__all__ = [
    "AdamW",
    "ALGORITHM_VERSIONS",
    "DEFAULT_ADAMW_PATTERNS",
    "DIAGNOSTIC_KEYS",
    "DeMo",
    "OPTIMIZERS",
    "Muon",
    "MuonIsotropic",
    "MuonNOLAH",
    "MuonOrthoNoise",
    "MuonWithAdamW",
    "NorMuon",
    "build_optimizer",
    "split_parameters",
]
