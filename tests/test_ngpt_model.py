"""nGPT (trainer/ngpt.py): presets, the float64 re-computation of the forward pass, weights on the sphere
along the right axis after init and after a step with projection, lazy projection, the optimizer split,
and the spec keys model.options and training.projection_every."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import optim
from tests.test_trainer_helpers import tiny_spec
from trainer.model import ModelError, build_model
from trainer.ngpt import NGPT, NGPT_PRESETS, LazyProjection, sphere_projection
from trainer.spec import DEFAULT_ADAMW_PATTERNS, RunSpec, SpecError


def ngpt(options=None, seed=0) -> NGPT:
    torch.manual_seed(seed)
    return build_model("ngpt-tiny", options=options)


def norms_along(p: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.linalg.vector_norm(p.detach().double(), dim=dim)


# ------------------------------------------------------------------ shapes and axes
@pytest.mark.parametrize("arch, lo, hi", [("ngpt-124m", 150e6, 200e6), ("ngpt-350m", 450e6, 520e6)])
def test_preset_sizes(arch, lo, hi):
    with torch.device("meta"):
        m = NGPT(NGPT_PRESETS[arch])
    assert lo < m.num_params() < hi
    assert (m.cfg.n_layer, m.cfg.n_embd) == {"ngpt-124m": (12, 768), "ngpt-350m": (24, 1024)}[arch]


def test_every_matrix_has_an_axis_of_the_embedding_size_and_nothing_else_is_normalized():
    m = ngpt()
    d = m.cfg.n_embd
    dims = m.sphere_dims()
    params = dict(m.named_parameters())
    assert set(dims) == {n for n, p in params.items() if p.ndim == 2}
    for name, dim in dims.items():
        assert params[name].shape[dim] == d, name  # every unit vector runs along the embedding dimension
    # rows for (out, d), columns for the two output projections (d, out)
    assert dims["blocks.0.attn.q.weight"] == 1 and dims["blocks.0.mlp.fc_u.weight"] == 1
    assert dims["blocks.0.attn.proj.weight"] == 0 and dims["blocks.0.mlp.proj.weight"] == 0
    assert dims["embed.weight"] == 1 and dims["lm_head.weight"] == 1
    # no LayerNorm, biases or tying
    assert not any("norm" in n or "bias" in n for n in params)
    assert m.lm_head.weight is not m.embed.weight
    with pytest.raises(ModelError, match="tying"):
        build_model("ngpt-tiny", tie_embeddings=True)


def test_init_puts_every_vector_on_the_sphere_along_its_axis_only():
    m = ngpt()
    for name, dim in m.sphere_dims().items():
        p = m.get_parameter(name)
        torch.testing.assert_close(norms_along(p, dim), torch.ones(p.shape[1 - dim], dtype=torch.float64),
                                   atol=1e-6, rtol=0)
    # the square attention output projection: its rows are not unit vectors (the axis matters)
    rows = norms_along(m.get_parameter("blocks.0.attn.proj.weight"), 1)
    assert (rows - 1).abs().max() > 0.05


def test_split_sends_scalars_embedding_and_head_to_adamw():
    m = ngpt()
    muon, adamw = optim.split_parameters(m, DEFAULT_ADAMW_PATTERNS)
    names = {n for n, _ in muon}
    blocks = {n for n in m.sphere_dims() if n.startswith("blocks.")}
    assert names == blocks
    assert {"embed.weight", "lm_head.weight", "s_z", "blocks.0.attn_alpha", "blocks.0.attn.s_qk",
            "blocks.0.mlp.s_u", "blocks.0.mlp.s_v"} <= {n for n, _ in adamw}
    gated = ngpt({"residual": "gated"})
    assert {"blocks.0.attn_gate", "blocks.0.mlp_gate"} <= {n for n, _ in optim.split_parameters(gated)[1]}


# ------------------------------------------------------------------ the forward pass against float64
def reference_logits(m: NGPT, idx: torch.Tensor) -> torch.Tensor:
    """An independent float64 re-computation of nGPT's forward pass from the parameters."""
    cfg = m.cfg
    P = {n: p.detach().double() for n, p in m.named_parameters()}
    d, H = cfg.n_embd, cfg.n_head
    D = d // H
    B, T = idx.shape

    def norm(x):
        return x / x.norm(dim=-1, keepdim=True)

    inv = 1.0 / cfg.rope_base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * c + x2 * s, x2 * c - x1 * s], dim=-1)

    def residual(h, out, b, which):
        if cfg.residual == "reference":
            a = (P[f"{b}{which}_alpha"] * cfg.alpha_init * math.sqrt(d)).abs()
            return norm(norm(h) + a * (norm(out) - norm(h)))
        return norm(h + torch.sigmoid(P[f"{b}{which}_gate"]) * cfg.gate_alpha * out)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    h = P["embed.weight"][idx]
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        q, k, v = ((h @ P[f"{b}attn.{x}.weight"].T).view(B, T, H, D) for x in "qkv")
        sqk = (P[f"{b}attn.s_qk"] * math.sqrt(d)).view(H, D)
        q, k = sqk * norm(rope(q)), sqk * norm(rope(k))
        att = torch.einsum("bthd,bshd->bhts", q, k) * math.sqrt(D)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = torch.einsum("bhts,bshd->bthd", att, v).reshape(B, T, d) @ P[f"{b}attn.proj.weight"].T
        h = residual(h, y, b, "attn")
        u = (h @ P[f"{b}mlp.fc_u.weight"].T) * P[f"{b}mlp.s_u"] * math.sqrt(d)
        g = (h @ P[f"{b}mlp.fc_v.weight"].T) * P[f"{b}mlp.s_v"] * math.sqrt(d)
        h = residual(h, (u * g * torch.sigmoid(g)) @ P[f"{b}mlp.proj.weight"].T, b, "mlp")
    return (h @ P["lm_head.weight"].T) * P["s_z"] * math.sqrt(d)


@pytest.mark.parametrize("options", [None, {"residual": "gated", "gate_alpha": 0.3}])
def test_forward_matches_a_float64_recomputation(options):
    m = ngpt(options, seed=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every scalar away from its init (and some alphas negative: |alpha| is used)
        for n, p in m.named_parameters():
            if p.ndim == 1:
                p.mul_(torch.empty(p.shape).uniform_(-2.0 if "alpha" in n else 0.5, 2.0, generator=g))
                if "gate" in n:
                    p.copy_(torch.randn(p.shape, generator=g))
        m.s_z.mul_(4.0)
    idx = torch.randint(0, 256, (2, 24), generator=g)
    ref = reference_logits(m, idx)
    out = m(idx)
    assert out.dtype == torch.float32 and ref.abs().max() > 1.0
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    loss = m(idx[:, :-1], idx[:, 1:])
    ref_loss = F.cross_entropy(reference_logits(m, idx[:, :-1]).reshape(-1, 256), idx[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)


def test_causal_and_block_size():
    m = ngpt()
    x = torch.randint(0, 256, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 256
    torch.testing.assert_close(m(x)[0, :8], m(y)[0, :8], rtol=0, atol=0)
    with pytest.raises(ModelError, match="block size"):
        m(torch.zeros(1, m.block_size + 1, dtype=torch.long))


# ------------------------------------------------------------------ projection after a step
@pytest.mark.parametrize("cls, muon", [("Muon", {"lr": 0.05}), ("Muon", {"lr": 0.05, "update": "geodesic"}),
                                       ("NorMuon", {"lr": 0.05}), ("AdamW", {})])
def test_after_a_step_with_projection_every_vector_has_norm_one_along_its_axis(cls, muon):
    m = ngpt(seed=2)
    opt = optim.build_optimizer(m, cls=cls, muon_kwargs=muon, adamw_kwargs={"lr": 0.01},
                                adamw_patterns=DEFAULT_ADAMW_PATTERNS)
    proj = sphere_projection(m, 1)
    x = torch.randint(0, 256, (4, 33))
    m(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    before = torch.cat([norms_along(m.get_parameter(n), d) for n, d in m.sphere_dims().items()])
    assert (before - 1).abs().max() > 1e-4  # the step moved the weights off the sphere
    dev = proj.after_step(1)
    assert dev.item() == pytest.approx((before - 1).abs().mean().item(), rel=1e-4)
    for name, dim in m.sphere_dims().items():
        p = m.get_parameter(name)
        assert (norms_along(p, dim) - 1).abs().max() < 1e-6, name


def test_stacked_projection_equals_one_matrix_at_a_time():
    """normalize_weights stacks same-shape matrices (issue 24); each vector must come out as w / ||w|| of
    its own float32 norm along its own axis, and the returned drift as the per-matrix mean (CPU: the same
    float32 reduction, so 1 ulp-level tolerances)."""
    torch.manual_seed(0)
    model = build_model("ngpt-tiny")
    groups = model._sphere_groups()
    assert any(len(n) >= model.STACK_AT_LEAST for _, n in groups) and any(len(n) < model.STACK_AT_LEAST for _, n in groups)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.3 * torch.rand_like(p))  # off the sphere, each vector by its own factor
    before = {n: model.get_parameter(n).detach().clone() for n in model.sphere_dims()}
    want = []
    for n, dim in model.sphere_dims().items():
        norm = torch.linalg.vector_norm(before[n], dim=dim, keepdim=True, dtype=torch.float32)
        want.append(norm.flatten())
    dev = model.normalize_weights()
    assert dev.item() == pytest.approx(torch.cat(want).sub(1).abs().mean().item(), rel=1e-6)
    for (n, dim), norm in zip(model.sphere_dims().items(), want):
        p = model.get_parameter(n)
        torch.testing.assert_close(p, before[n] / norm.view_as(torch.linalg.vector_norm(before[n], dim=dim, keepdim=True)),
                                   rtol=2e-7, atol=0)
        torch.testing.assert_close(torch.linalg.vector_norm(p, dim=dim), torch.ones(p.shape[1 - dim]), rtol=0, atol=1e-6)
    assert model.normalize_weights().item() < 1e-6  # on the sphere already
    # CPU: bitwise what one matrix at a time gives (the trainer's version stays: CPU results unchanged)
    a, b = build_model("ngpt-tiny"), build_model("ngpt-tiny")
    with torch.no_grad():
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.mul_(1.5), pb.copy_(pa)
    b.STACK_AT_LEAST = 10**9  # every matrix on its own: the former loop
    assert torch.equal(a.normalize_weights(), b.normalize_weights())
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_lazy_projection_only_every_kth_step():
    m = ngpt()
    proj = LazyProjection(m, 3)
    with torch.no_grad():
        m.blocks[0].attn.q.weight.mul_(1.5)
    assert proj.after_step(1) is None and proj.after_step(2) is None
    assert (norms_along(m.blocks[0].attn.q.weight, 1) - 1.5).abs().max() < 1e-6  # untouched in between
    assert proj.after_step(3).item() > 0
    assert (norms_along(m.blocks[0].attn.q.weight, 1) - 1).abs().max() < 1e-6
    assert sphere_projection(build_model("tiny"), 1) is None  # the GPT has nothing to project
    with pytest.raises(ValueError, match="projection_every"):
        LazyProjection(m, 0)


# ------------------------------------------------------------------ spec keys
def spec_dict(**over) -> dict:
    d = tiny_spec("/nonexistent", model={"name": "ngpt-tiny", "arch": "ngpt-tiny"})
    for k, v in over.items():
        d[k] = {**d[k], **v}
    return d


def errors(d) -> dict:
    with pytest.raises(SpecError) as ei:
        RunSpec.from_dict(d)
    return {k: a for k, _, a in ei.value.errors}


def test_spec_keys_resolve_and_round_trip():
    out = RunSpec.from_dict(spec_dict()).to_dict()
    assert out["model"]["options"] == {"residual": "reference"} and out["training"]["projection_every"] == 1
    d = spec_dict(model={"options": {"residual": "gated"}}, training={"projection_every": 7})
    out = RunSpec.from_dict(d).to_dict()
    assert out["model"]["options"] == {"residual": "gated", "gate_alpha": 0.15}
    assert out["training"]["projection_every"] == 7
    assert RunSpec.from_dict(copy.deepcopy(out)).to_dict() == out
    gpt = RunSpec.from_dict(tiny_spec("/nonexistent")).to_dict()
    assert "options" not in gpt["model"] and gpt["training"]["projection_every"] == 1
    adamw = spec_dict(optimizer={"arm": "adamw", "class": "AdamW", "muon": {}})
    assert RunSpec.from_dict(adamw).optimizer.cls == "AdamW"


@pytest.mark.parametrize("over, key, words", [
    ({"model": {"options": {"residual": "gated", "gate_alpha": 0.0}}}, "model.options.gate_alpha", "> 0.0"),
    ({"model": {"options": {"gate_alpha": 0.2}}}, "model.options.gate_alpha", "only with"),
    ({"model": {"options": {"residual": "lerp"}}}, "model.options.residual", "one of"),
    ({"model": {"options": {"alpha": 1}}}, "model.options.alpha", "unknown key"),
    ({"training": {"projection_every": 0}}, "training.projection_every", ">= 1"),
    ({"optimizer": {"class": "AdamW"}}, "optimizer.muon", "empty for class AdamW"),
])
def test_bad_ngpt_spec_fields_are_named(over, key, words):
    errs = errors(spec_dict(**over))
    assert key in errs and words in errs[key], errs


def test_gpt_runs_refuse_ngpt_only_settings():
    errs = errors(tiny_spec("/nonexistent", training={**tiny_spec("/x")["training"], "projection_every": 3}))
    assert "only the nGPT presets" in errs["training.projection_every"]
    errs = errors(tiny_spec("/nonexistent", model={"name": "tiny", "arch": "tiny", "options": {"residual": "gated"}}))
    assert "nGPT" in errs["model.options"]
    with pytest.raises(ModelError, match="only the nGPT presets"):
        build_model("tiny", options={"residual": "gated"})
