"""The AdamW arm: every parameter to AdamW (optimizer.class AdamW; its settings are optimizer.adamw).

`AdamW` is torch.optim.AdamW under the name the factory lists (optim/factory.py builds it for every
parameter, with the same defaults as the AdamW half of the Muon arms). It takes no Muon-family settings: its
registry entry (optim/registry.py) takes "none" of the parameters and declares no arguments.
"""

from __future__ import annotations

import torch


class AdamW(torch.optim.AdamW):
    pass
