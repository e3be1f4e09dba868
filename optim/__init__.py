"""The Muon family of optimizers (pure PyTorch). See docs/optim.md; each class is declared in optim/registry.py."""

from .adamw import AdamW
from .demo import DeMo
from .factory import OPTIMIZERS, MuonWithAdamW, build_optimizer, split_parameters
from .muon import DIAGNOSTIC_KEYS, Muon
from .nolah import MuonNOLAH
from .normuon import NorMuon
from .orthonoise import MuonIsotropic, MuonOrthoNoise
from .registry import ALGORITHM_VERSIONS, DEFAULT_ADAMW_PATTERNS

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
