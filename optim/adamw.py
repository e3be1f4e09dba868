"""The AdamW arm: every parameter to AdamW (optimizer.class AdamW; its settings are optimizer.adamw).

`AdamW` is torch.optim.AdamW under the name the factory lists (optim/factory.py builds it for every
parameter, with the same defaults as the AdamW half of the Muon arms). It takes no Muon-family settings:
`takes_muon_kwargs = False` makes the factory's list of allowed `optimizer.muon` keys empty.
"""

from __future__ import annotations

import torch


class AdamW(torch.optim.AdamW):
    takes_muon_kwargs = False
