"""Issue 19 item 9: a gate that cannot work is refused before any run (the pre-run check in study/checks.py):
an effective-rank gate over an AdamW baseline showed up only at the end."""
import copy

import pytest

from study import Plan, PlanError, load_study
from tests.workflow_helpers import REPO


def test_a_gate_on_a_metric_a_judged_arm_never_logs_is_refused():
    cfg = load_study({"study": "ngpt", "tiny": True}, REPO)[0]
    ok = copy.deepcopy(cfg)
    Plan(ok)
    cfg["phases"]["lr_sweep"]["gates"]["rank_higher"] = {"kind": "metric_higher", "metric": "eff_rank_mean",
                                                         "arms": ["muon"]}
    with pytest.raises(PlanError) as err:
        Plan(cfg)
    msg = str(err.value)
    assert "phases.lr_sweep.gates.rank_higher.metric" in msg and "adamw" in msg and "AdamW" in msg
