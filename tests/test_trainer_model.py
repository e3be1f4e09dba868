"""Models: presets, the optimizer split by name, init from the seed, hf:<local path>."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.test_trainer_helpers import build_corpus, tiny_spec
from trainer.distributed import DistInfo
from trainer.hf import transformers_available
from trainer.model import GPT, PRESETS, ModelError, build_model, preset_config
from trainer.spec import RunSpec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def test_tiny_is_well_under_a_million_and_forward_works():
    torch.manual_seed(0)
    m = build_model("tiny")
    assert m.num_params() < 200_000
    x = torch.randint(0, 256, (2, 16))
    assert m(x).shape == (2, 16, 256)
    loss = m(x, x)
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.2  # starts near uniform
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("arch, lo, hi", [("gpt-124m", 120e6, 170e6), ("gpt-350m", 350e6, 420e6),
                                          ("gpt-1b", 1.1e9, 1.25e9)])
def test_preset_sizes(arch, lo, hi):
    with torch.device("meta"):
        m = GPT(preset_config(arch))
    assert lo < m.num_params() < hi
    blocks = sum(p.numel() for n, p in m.named_parameters() if n.startswith("blocks."))
    if arch == "gpt-1b":
        assert 0.95e9 < blocks < 1.05e9


def test_tied_head_and_causality():
    torch.manual_seed(0)
    m = build_model("tiny", tie_embeddings=True)
    assert m.lm_head.weight is m.embed.weight
    assert "lm_head.weight" not in dict(m.named_parameters())
    x = torch.randint(0, 256, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 256  # the future changes; the first 8 logits must not
    torch.testing.assert_close(m(x)[0, :8], m(y)[0, :8], rtol=0, atol=0)
    with pytest.raises(ModelError, match="block size"):
        m(torch.zeros(1, PRESETS["tiny"].block_size + 1, dtype=torch.long))
    with pytest.raises(ModelError, match="one of"):
        build_model("gpt-7b")


def test_optimizer_split_and_init_shared_across_arms_not_seeds(corpus):
    """Two arms with the same seed start from the same weights and see the same data; another seed does not."""
    from trainer.loop import Session

    def session(**kw):
        return Session(RunSpec.from_dict(tiny_spec(corpus, **kw)), CPU, log=lambda m: None)

    a = session()
    b = session(optimizer={"arm": "orthonoise", "class": "MuonOrthoNoise",
                           "muon": {"lr": 0.02, "alpha": 0.01, "rank_every": 5}}, alpha=0.01)
    c = session(seed=2)
    asg = a.opt.assignment
    assert set(asg["adamw"]) == {"embed.weight", "lm_head.weight", "norm_f.weight"} | \
        {f"blocks.{i}.norm{j}.weight" for i in range(2) for j in (1, 2)}
    assert all(n.endswith(("q.weight", "k.weight", "v.weight", "proj.weight", "fc.weight")) for n in asg["muon"])
    for (n, p), (_, q), (_, r) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                      c.model.state_dict().items()):
        assert torch.equal(p, q), n
        if "norm" not in n:
            assert not torch.equal(p, r), n
    for (xa, _), (xb, _) in zip(a.micro_batches(3), b.micro_batches(3)):
        assert torch.equal(xa, xb)
    assert not torch.equal(next(a.micro_batches(3))[0], next(c.micro_batches(3))[0])
    assert a.evaluate() == b.evaluate()
    assert torch.equal(torch.from_numpy(a.val_idx), torch.from_numpy(c.val_idx))  # same val set for every seed


@pytest.mark.skipif(not transformers_available(), reason="transformers is not installed (optional extra 'hf')")
def test_hf_local_llama_trains(corpus, tmp_path):
    import transformers

    from trainer.loop import run
    from trainer.records import read_csv

    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    spec = tiny_spec(corpus, model={"name": "llama-tiny", "arch": f"hf:{tmp_path / 'llama'}"},
                     training={"steps": 6, "warmup_steps": 0}, eval={"every": 3, "at_steps": [3, 6]})
    s = RunSpec.from_dict(copy.deepcopy(spec))
    assert run(s, tmp_path / "out", tmp_path / "ck") == 0
    import json

    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["status"] == "ok" and m["steps_completed"] == 6
    assert m["versions"]["hf_model_path"] == str((tmp_path / "llama").resolve())
    assert m["final_val_loss"] < float(read_csv(tmp_path / "out" / "history.csv")[0]["val_loss"])
    # nothing is fetched: a path without a model is an error that says so
    from trainer.hf import HFCausalLM

    with pytest.raises(ModelError, match="config.json missing"):
        HFCausalLM(str(tmp_path / "no-model"))
