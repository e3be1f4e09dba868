"""Granite 4.0-H (Mamba-2 + attention, transformers' GraniteMoeHybrid) under the OrthoNoise study's optimizer
split: every parameter of a small config, listed, goes where the study says (2-D projections to Muon; conv1d
kernels, A_log, D, dt biases, norms, embeddings and the head to AdamW)."""

from __future__ import annotations

import pytest
import yaml

from tests import hub_assets as A
from tests.workflow_helpers import REPO

transformers = pytest.importorskip("transformers")

MUON = {  # name (after "hf.model.layers.N.") -> shape of the small config: the 2-D projections
    "shared_mlp.input_linear.weight": (128, 32), "shared_mlp.output_linear.weight": (32, 64),
    "mamba.in_proj.weight": (148, 32), "mamba.out_proj.weight": (32, 64),
    "self_attn.q_proj.weight": (32, 32), "self_attn.k_proj.weight": (16, 32),
    "self_attn.v_proj.weight": (16, 32), "self_attn.o_proj.weight": (32, 32),
}
ADAMW = {
    "input_layernorm.weight": (32,), "post_attention_layernorm.weight": (32,),
    "mamba.dt_bias": (4,), "mamba.A_log": (4,), "mamba.D": (4,),
    "mamba.conv1d.weight": (80, 1, 4), "mamba.conv1d.bias": (80,), "mamba.norm.weight": (64,),
}


def test_every_granite_parameter_goes_where_the_study_says(tmp_path):
    import torch

    from optim.factory import split_parameters
    from trainer.hf import HFCausalLM

    torch.manual_seed(0)
    transformers.GraniteMoeHybridForCausalLM(A.granite_config()).save_pretrained(tmp_path / "g")
    model = HFCausalLM(str(tmp_path / "g"))
    patterns = yaml.safe_load((REPO / "config/studies/orthonoise.yaml").read_text())["optimizer_defaults"]["adamw_patterns"]
    muon, adamw = split_parameters(model, patterns)
    where = {n: "muon" for n, _ in muon} | {n: "adamw" for n, _ in adamw}
    shapes = dict((n, tuple(p.shape)) for n, p in model.named_parameters())
    assert set(where) == set(shapes)  # every parameter has a side (tied head: once, as the embedding)
    want = {"hf.model.embed_tokens.weight": "adamw", "hf.model.norm.weight": "adamw"}
    for layer, kind in enumerate(("mamba", "attention")):
        for name, shape in MUON.items():
            if name.startswith("mamba.") != (kind == "mamba") and not name.startswith("shared_mlp"):
                continue
            want[f"hf.model.layers.{layer}.{name}"] = "muon"
            assert shapes[f"hf.model.layers.{layer}.{name}"] == shape
        for name, shape in ADAMW.items():
            if name.startswith("mamba.") and kind != "mamba":
                continue
            want[f"hf.model.layers.{layer}.{name}"] = "adamw"
            assert shapes[f"hf.model.layers.{layer}.{name}"] == shape
    assert where == want
    # the 3-D conv1d kernel is what the study's `conv1d` pattern is for: without it Muon would take it
    old = [p for p in patterns if p not in ("conv1d", "A_log", "dt_bias", "mamba.D")]
    muon_old = {n for n, _ in split_parameters(model, old)[0]}
    assert muon_old - {n for n, _ in muon} == {"hf.model.layers.0.mamba.conv1d.weight"}
