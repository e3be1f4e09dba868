"""Parameter split, build_optimizer's contract with the trainer, and bitwise checkpoint round-trips."""

import io

import pytest
import torch
from torch import nn

import optim


class TinyGPT(nn.Module):
    def __init__(self, vocab=32, d=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.fc2 = nn.Linear(4 * d, d, bias=False)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.gain = nn.Parameter(torch.ones(d, d))  # 2-D, but its name sends it to AdamW
        self.norm_f = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.frozen = nn.Parameter(torch.zeros(d, d), requires_grad=False)

    def forward(self, idx):
        x = self.wte(idx)
        q = self.attn(self.ln_1(x))[..., : x.shape[-1]]
        x = x + self.proj(q)
        x = x + self.fc2(torch.relu(self.fc(x)))
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.lm_head(self.norm_f(x @ self.gain))


def test_split_by_names_and_shapes():
    muon, adamw = optim.split_parameters(TinyGPT())
    assert [n for n, _ in muon] == ["attn.weight", "proj.weight", "fc.weight", "fc2.weight", "conv.weight"]
    assert [n for n, _ in adamw] == [
        "gain", "wte.weight", "ln_1.weight", "ln_1.bias", "attn.bias", "conv.bias", "norm_f.weight", "lm_head.weight",
    ]  # fmt: skip  (named_parameters lists a module's own parameters first)
    muon2, adamw2 = optim.split_parameters(TinyGPT(), adamw_patterns=["wte", "lm_head"])
    assert "gain" in [n for n, _ in muon2] and "ln_1.weight" in [n for n, _ in adamw2]  # 1-D always AdamW
    with pytest.raises(ValueError, match="adamw_patterns"):
        optim.split_parameters(TinyGPT(), adamw_patterns=[""])


def test_build_optimizer_contract():
    torch.manual_seed(0)
    model = TinyGPT()
    opt = optim.build_optimizer(
        model, "MuonOrthoNoise", {"lr": 0.02, "alpha": 1e-2, "rank_threshold": None}, {"lr": 3e-3, "betas": [0.9, 0.95]},
        seed=7,
    )  # fmt: skip
    assert isinstance(opt.muon, optim.MuonOrthoNoise) and isinstance(opt.adamw, torch.optim.AdamW)
    assert opt.muon.seed == 7 and opt.adamw.param_groups[0]["betas"] == (0.9, 0.95)
    assert opt.assignment["muon"][0] == "attn.weight" and "lm_head.weight" in opt.assignment["adamw"]
    assert [(g["kind"], g["initial_lr"]) for g in opt.param_groups] == [("muon", 0.02), ("adamw", 3e-3)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(0, 32, (2, 8))).square().mean().backward()
    for g in opt.param_groups:  # what the trainer does with its lr schedule
        g["lr"] = g["initial_lr"] * 0.5
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(opt.assignment["muon"]) | set(opt.assignment["adamw"])
    assert set(opt.diagnostics) == set(optim.DIAGNOSTIC_KEYS) and opt.diagnostics["noise_fraction"] == 1.0
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    assert opt.step_count == 1


def test_build_optimizer_errors():
    m = TinyGPT()
    with pytest.raises(ValueError, match="cls='Adam'"):
        optim.build_optimizer(m, "Adam")
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['noise_method'\]"):
        optim.build_optimizer(m, "MuonIsotropic", {"noise_method": "qr"})
    with pytest.raises(ValueError, match="rank_threshold"):
        optim.build_optimizer(m, "MuonOrthoNoise", {"rank_threshold": 2.0})
    with pytest.raises(ValueError, match="seed"):
        optim.build_optimizer(m, "Muon", {"seed": 1}, seed=2)
    with pytest.raises(ValueError, match="adamw_kwargs"):
        optim.build_optimizer(m, "Muon", adamw_kwargs={"momentum": 0.9})
    # only AdamW parameters: the Muon kwargs are still checked
    only_vectors = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(ValueError, match="lr"):
        optim.build_optimizer(only_vectors, "Muon", {"lr": -1.0})
    opt = optim.build_optimizer(only_vectors, "Muon", {"lr": 0.02})
    assert opt.muon is None and opt.diagnostics["grad_norm"] is None


def test_algorithm_versions_cover_every_class():
    assert set(optim.ALGORITHM_VERSIONS) == set(optim.OPTIMIZERS)
    assert all(isinstance(v, int) and v >= 1 for v in optim.ALGORITHM_VERSIONS.values())


CHECKPOINT_CASES = [
    ("Muon", {"rank_every": 3}),
    ("MuonOrthoNoise", dict(alpha=0.05, schedule="exponential", alpha_end=0.005, schedule_steps=6,
                            noise_warmup_steps=2, rank_threshold=0.95, rank_every=4, persist_noise=True)),
    ("MuonOrthoNoise", dict(alpha=0.05, noise_method="polar", rank_threshold=None)),
    ("MuonIsotropic", dict(alpha=0.05, schedule="linear", alpha_end=0.01, schedule_steps=9, rank_threshold=0.95,
                           rank_every=3)),
    ("MuonNOLAH", {}),
]  # fmt: skip


def _batch(t):
    g = torch.Generator().manual_seed(t)
    return torch.randint(0, 32, (4, 8), generator=g)


def _train(model, opt, steps, start=0):
    fractions = []
    for t in range(start, start + steps):
        out = model(_batch(t))
        nn.functional.cross_entropy(out.reshape(-1, 32), _batch(t + 1000).reshape(-1)).backward()
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * (1 - t / 40)
        opt.step()
        opt.zero_grad(set_to_none=True)
        fractions.append(opt.diagnostics["noise_fraction"])
    return fractions


@pytest.mark.parametrize("cls,kwargs", CHECKPOINT_CASES)
def test_checkpoint_round_trip_is_bitwise(cls, kwargs):
    def build():
        torch.manual_seed(0)
        m = TinyGPT()
        return m, optim.build_optimizer(m, cls, {"lr": 0.02, **kwargs}, {"lr": 3e-3}, seed=5)

    model_a, opt_a = build()
    fractions = _train(model_a, opt_a, 12)
    if cls in ("MuonOrthoNoise", "MuonIsotropic"):  # the resumed part must include noisy steps
        assert any(f > 0 for f in fractions[7:])

    model_b, opt_b = build()
    _train(model_b, opt_b, 7)
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model_c, opt_c = build()
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    assert opt_c.step_count == 7
    _train(model_c, opt_c, 5, start=7)

    for (n, a), (_, c) in zip(model_a.named_parameters(), model_c.named_parameters()):
        assert torch.equal(a, c), n
    assert opt_a.diagnostics == opt_c.diagnostics
    if cls in ("MuonOrthoNoise", "MuonIsotropic") and kwargs.get("rank_threshold"):
        triggers = [opt_c.muon.state[p].get("noise_on") for p in opt_c.muon.param_groups[0]["params"]]
        assert all(isinstance(x, bool) for x in triggers)


def test_load_rejects_other_split_or_class():
    torch.manual_seed(0)
    m = TinyGPT()
    sd = optim.build_optimizer(m, "Muon").state_dict()
    with pytest.raises(ValueError, match="assignment"):
        optim.build_optimizer(m, "Muon", adamw_patterns=["wte"]).load_state_dict(sd)
    with pytest.raises(ValueError, match="saved by Muon"):
        optim.build_optimizer(m, "MuonNOLAH").load_state_dict(sd)
