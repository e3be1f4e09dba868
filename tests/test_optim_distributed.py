"""Two CPU processes (gloo): DDP replicas stay bitwise identical under noise; sharding changes nothing."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import optim

STEPS = 20
CONFIGS = {
    # noise on every matrix every step, persisted into the momentum (exercises the buffer gather)
    "orthonoise": ("MuonOrthoNoise", dict(alpha=0.05, rank_threshold=None, persist_noise=True, rank_every=5)),
    # the adaptive trigger, re-evaluated every 3 steps (exercises the rank gather)
    "isotropic": ("MuonIsotropic", dict(alpha=0.05, rank_threshold=0.95, rank_every=3)),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 12)
        self.a = nn.Linear(12, 24, bias=False)
        self.b = nn.Linear(24, 24, bias=False)
        self.c = nn.Linear(24, 24, bias=False)  # three 24x24 matrices: a bucket that 2 ranks split 2 + 1
        self.d = nn.Linear(24, 24)
        self.conv = nn.Conv1d(24, 12, 3, padding=1)
        self.head = nn.Linear(12, 16, bias=False)

    def forward(self, idx):
        x = torch.relu(self.a(self.embed(idx)))
        x = torch.relu(self.d(self.c(self.b(x))))
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.head(x)


def _train(cls, kwargs, shard, rank):
    torch.manual_seed(0)
    model = Net()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = optim.build_optimizer(model, cls, {"lr": 0.02, "shard_across_ranks": shard, **kwargs}, {"lr": 1e-3}, seed=3)
    noisy = 0.0
    for t in range(STEPS):
        g = torch.Generator().manual_seed(1000 * t + rank)  # each rank its own data
        idx = torch.randint(0, 16, (4, 6), generator=g)
        loss = nn.functional.cross_entropy(ddp(idx).reshape(-1, 16), torch.randint(0, 16, (24,), generator=g))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        noisy += opt.diagnostics["noise_fraction"]
    if shard:  # the measurement in flight is per rank: a state_dict needs it gathered first
        with pytest.raises(RuntimeError, match="settle_measurements"):
            opt.state_dict()
    opt.settle_measurements()  # a collective when sharded
    jobs = opt.state_dict()["muon"]["muon_global"]["rank_jobs"]
    return {n: p.detach().clone() for n, p in model.named_parameters()}, (noisy, jobs)


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for name, (cls, kwargs) in CONFIGS.items():
        for shard in (False, True):
            results[(name, shard)] = _train(cls, kwargs, shard, rank)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_identical_and_sharding_agrees(tmp_path):
    # forked, not spawned: the ranks start with this process's imports instead of importing torch again each
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for key in r0:
        params0, (noisy0, jobs0) = r0[key]
        params1, (noisy1, jobs1) = r1[key]
        assert noisy0 == noisy1 and noisy0 > 0, key
        assert jobs0 == jobs1 == r0[(key[0], False)][1][1] and jobs0, key  # the same whole-bucket ranks  # noise was added, the same on both ranks
        for n in params0:
            assert torch.equal(params0[n], params1[n]), (key, n)  # bitwise-identical replicas
    torch.manual_seed(0)
    init = dict(Net().named_parameters())  # the workers' initial parameters
    for name in CONFIGS:
        plain, _ = r0[(name, False)]
        sharded, _ = r0[(name, True)]
        for n in plain:
            assert not torch.equal(plain[n], init[n]), (name, n)  # it trained
            assert torch.equal(sharded[n], plain[n]), (name, n)  # sharding changes no bit (CPU)
