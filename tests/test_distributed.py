"""Sharded runs (torchrun, gloo on CPU): the merged run equals a single process's, byte for byte,
and every rank resumes on its own."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.distributed import env_from, owner, shard, shard_samples
from benchmark.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
PLUG = "tests/plugins/toy_defenses.py"
# 14 images in batches of 4: 4 batches, the last one short; rank 0 gets batches 0 and 2, rank 1 gets 1 and 3
RUN = ["run", "--defense", f"{PLUG}:noisy", "--attacks", "pgd_eot,dwbox_both", "--steps", "2", "--eot", "2",
       "--subset", "first:14", "--batch-size", "4", "--scale", "full", "--eval-repeats", "3", "--quiet"]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmark.cli", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "benchmark.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def files(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in ("record.json", "samples.jsonl", "summary.json")}


def computed(d: Path) -> dict[int, list[int]]:
    timing = json.loads((d / "timing.json").read_text())
    assert timing["world_size"] == 2 and timing["backend"] == "gloo"
    return {r["rank"]: r["batches_computed"] for r in timing["ranks"]}


def test_two_gloo_ranks_equal_one_process_and_resume_per_rank(tmp_path):
    single, dist = tmp_path / "single", tmp_path / "dist"
    out = bench(*RUN, "--out", str(single))
    assert out.returncode == 0, out.stderr[-2000:]
    expected = files(single)

    out = torchrun(*RUN, "--out", str(dist))
    assert out.returncode == 0, out.stderr[-3000:]
    assert computed(dist) == {0: [0, 2], 1: [1, 3]}  # each rank attacked its own shard only
    assert files(dist) == expected
    assert out.stdout.count("worst case") == 1  # one table, from rank 0

    # another run into the same folder: every rank stops, rank 0 says why in one line, nothing is touched
    out = torchrun(*RUN, "--out", str(dist), "--seed", "1")
    assert out.returncode != 0
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "holds a different run" in errors[0], out.stderr[-3000:]
    assert files(dist) == expected

    # a crash leaves a subset of the (atomic) batch files: lose one batch of each rank and the merged files
    for name in ("batches/000001.json", "batches/000002.json", "samples.jsonl", "summary.json", "timing.json"):
        (dist / name).unlink()
    out = torchrun(*RUN, "--out", str(dist))
    assert out.returncode == 0, out.stderr[-3000:]
    assert computed(dist) == {0: [2], 1: [1]}  # every rank redid only its missing batch
    assert files(dist) == expected
    assert "resumed" in out.stdout



def test_distributed_flag_without_torchrun_is_one_error_line(tmp_path):
    out = bench(*RUN, "--out", str(tmp_path / "o"), "--distributed")
    assert out.returncode == 2, out.stderr[-1500:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --distributed needs the torchrun environment"), lines
    assert not (tmp_path / "o").exists()


def test_torchrun_environment_parsing():
    assert env_from({}) is None
    full = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    e = env_from(full)
    assert (e.rank, e.world_size, e.local_rank) == (1, 2, 1)
    with pytest.raises(BenchError, match="WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        env_from({"RANK": "0"})
    with pytest.raises(BenchError, match="must be integers"):
        env_from({**full, "RANK": "x"})
    with pytest.raises(BenchError, match="0 <= RANK < WORLD_SIZE"):
        env_from({**full, "RANK": "2"})


@pytest.mark.parametrize("n, bs, world", [(14, 4, 2), (1000, 64, 8), (3, 64, 4), (17, 1, 3)])
def test_shards_partition_the_batches(n, bs, world):
    n_batches = (n + bs - 1) // bs
    shards = [shard(n, bs, r, world) for r in range(world)]
    assert sorted(b for s in shards for b in s) == list(range(n_batches))
    assert all(owner(b, world) == r for r, s in enumerate(shards) for b in s)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert sum(shard_samples(n, bs, r, world) for r in range(world)) == n


class _GlobalRngModule(nn.Module):
    """Randomness from torch's global RNG, loud enough to change predictions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.net(x) + 3.0 * torch.randn(x.shape[0], 10, device=x.device)


def test_global_rng_defense_batches_do_not_depend_on_order(tmp_path):
    """A batch computed alone (another rank, or a resume) equals the same batch after others."""
    from benchmark.runner import RunSpec, run
    from defenses.base import ModuleDefense

    defense = ModuleDefense(_GlobalRngModule(), name="global_rng", stochastic=True).freeze()
    spec = RunSpec(defense="global_rng", attacks=["pgd_eot"], steps=1, eot=1, subset="first:12", batch_size=4,
                   eval_repeats=3)
    cpu = torch.device("cpu")
    ref = run(spec, out=tmp_path / "all", device=cpu, defense=defense)
    torch.manual_seed(0)
    run(spec, out=tmp_path / "parts", device=cpu, defense=defense, batch_filter=lambda b: b == 2)
    torch.manual_seed(1)  # whatever the global state, batches 0 and 1 come out the same
    res = run(spec, out=tmp_path / "parts", device=cpu, defense=defense)
    assert (tmp_path / "parts/samples.jsonl").read_bytes() == (tmp_path / "all/samples.jsonl").read_bytes()
    assert res.summary == ref.summary


class _FakeComm:
    """Two ranks run one after the other in this process, each on its own disk (no shared folder)."""

    backend = "fake"

    def __init__(self, rank: int, inbox: list) -> None:
        self.rank, self.world_size, self.inbox = rank, 2, inbox

    def owns(self, b: int) -> bool:
        return owner(b, 2) == self.rank

    def open_store(self, store, record) -> bool:
        return store.open(record)

    def gather(self, obj):
        if self.rank != 0:
            self.inbox.append(obj)
            return None
        return [obj, *self.inbox]


def test_rank0_merges_rows_from_another_disk(tmp_path):
    from benchmark.build import make_defense
    from benchmark.runner import RunSpec, run

    defense = make_defense(f"{PLUG}:noisy")
    spec = RunSpec(defense=f"{PLUG}:noisy", attacks=["pgd_eot"], steps=1, eot=1, subset="first:10", batch_size=4,
                   eval_repeats=2)
    cpu = torch.device("cpu")
    ref = run(spec, out=tmp_path / "single", device=cpu, defense=defense)
    inbox: list = []
    r1 = run(spec, out=tmp_path / "node1", device=cpu, defense=defense, comm=_FakeComm(1, inbox))
    assert r1.summary == {} and sorted(p.name for p in (tmp_path / "node1/batches").iterdir()) == ["000001.json"]
    r0 = run(spec, out=tmp_path / "node0", device=cpu, defense=defense, comm=_FakeComm(0, inbox))
    assert r0.summary == ref.summary
    for name in ("record.json", "samples.jsonl", "summary.json", "batches/000001.json"):
        assert (tmp_path / "node0" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    timing = json.loads((tmp_path / "node0/timing.json").read_text())
    assert [r["batches_computed"] for r in timing["ranks"]] == [[0, 2], [1]]
