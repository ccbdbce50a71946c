"""Sharded runs on torch.distributed: ``torchrun --nproc-per-node N -m benchmark.cli run ...``.

Why batches, not samples: a run's randomness is drawn per *batch* (``benchmark.seeds``: one
generator per (seed, purpose, batch index, attack)), and third-party attacks (pyautoattack)
draw whole-batch tensors, so a sample's result depends on which batch it is in. A batch's
result does not depend on which process computes it, in what order, or after a resume. So the
unit of work is the run's own batch ``b`` (samples ``[b * B, (b + 1) * B)`` of the subset, B =
``--batch-size``): batch ``b`` belongs to rank ``b % WORLD_SIZE``. Every rank computes exactly
the batches a single process would, writes them to its run folder (``batches/NNNNNN.json``,
atomic, keyed by the global batch index, so a rank resumes on its own and a later run with
another world size resumes too), then sends its rows to rank 0, which writes any batch it
lacks (nodes without a shared filesystem) and assembles ``samples.jsonl`` and ``summary.json``
exactly as a single process does. Only ``timing.json`` says that the run was sharded.

The process group: gloo on CPU, NCCL on CUDA (rank device ``cuda:LOCAL_RANK``). The row
exchange itself is a few kB of Python objects, so it goes through a gloo group even on CUDA:
ranks that finish early then wait on a CPU socket, not on an NCCL kernel and its watchdog.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .errors import BenchError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RENDEZVOUS_KEYS = ("MASTER_ADDR", "MASTER_PORT")
# Ranks with fewer batches wait for the slowest rank inside a collective; a full-scale diffusion
# run can keep them there for hours, far beyond torch's 10-30 minute default timeouts.
WAIT_TIMEOUT = datetime.timedelta(days=7)
LAUNCH_HINT = "launch with: torchrun --nproc-per-node N -m benchmark.cli run ..."


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def env_from(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or None
    when none of RANK/WORLD_SIZE/LOCAL_RANK is set; a BenchError when they are partial or invalid."""
    environ = os.environ if environ is None else environ
    present = [k for k in ENV_KEYS if k in environ]
    if not present:
        return None
    missing = [k for k in ENV_KEYS + RENDEZVOUS_KEYS if not environ.get(k)]
    if missing:
        raise BenchError(f"incomplete torchrun environment: {', '.join(missing)} not set (found {', '.join(present)}); "
                         + LAUNCH_HINT)
    try:
        rank, world, local = (int(environ[k]) for k in ENV_KEYS)
    except ValueError:
        raise BenchError("torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         + ", ".join(f"{k}={environ[k]!r}" for k in ENV_KEYS)) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise BenchError(f"torchrun environment: need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={rank}, "
                         f"WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistEnv(rank, world, local)


def owner(batch: int, world_size: int) -> int:
    """The rank that computes batch ``batch``: round robin, so shards differ by at most one batch."""
    return batch % world_size


def shard(n: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The batch indices of ``rank`` for a run of ``n`` samples in batches of ``batch_size``."""
    n_batches = (n + batch_size - 1) // batch_size
    return [b for b in range(n_batches) if owner(b, world_size) == rank]


def shard_samples(n: int, batch_size: int, rank: int, world_size: int) -> int:
    """How many samples ``rank`` attacks (for its progress bar)."""
    return sum(min(batch_size, n - b * batch_size) for b in shard(n, batch_size, rank, world_size))


def rank_device(requested: str, env: DistEnv) -> torch.device:
    """``cpu`` stays ``cpu``; ``cuda``/``auto`` on a CUDA machine becomes ``cuda:LOCAL_RANK``."""
    from .build import resolve_device

    dev = resolve_device(requested)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise BenchError(f"--device {requested} under torchrun: every rank uses cuda:LOCAL_RANK; pass --device cuda")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise BenchError(f"LOCAL_RANK {env.local_rank} but this node has {count} CUDA device(s); "
                         f"use --nproc-per-node {count} or fewer")
    dev = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(dev)
    return dev


class Comm:
    """The process group of a sharded run, with the few collectives the runner needs."""

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            raise BenchError("this PyTorch build has no torch.distributed; run without torchrun")
        self.env = env
        self.device = device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self._dist = dist
        try:
            dist.init_process_group(self.backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                    timeout=WAIT_TIMEOUT)
            self._objects = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT) if self.backend != "gloo" else None
        except (RuntimeError, ValueError) as e:
            raise BenchError(f"rank {env.rank}: could not join the {self.backend} process group "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    def owns(self, batch: int) -> bool:
        return owner(batch, self.world_size) == self.rank

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj, group=self._objects)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every rank, in rank order, on rank 0 (None on the others)."""
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        self._dist.gather_object(obj, out, dst=0, group=self._objects)
        return out

    def raise_any(self, error: str | None) -> None:
        """Collective: if any rank had an error, every rank stops (none is left waiting); rank 0
        reports the first error as the usual one ``error:`` line, the others exit 2 silently."""
        errors = [(r, e) for r, e in enumerate(self.all_gather(error)) if e]
        if errors:
            r, e = errors[0]
            if self.rank != 0:
                raise SystemExit(2)
            raise BenchError(e if r == 0 else f"rank {r}: {e}")

    def open_store(self, store: Any, record: dict[str, Any]) -> bool:
        """Rank 0 creates (or checks) the run folder first, then the others do: on a shared
        filesystem they find rank 0's record, so no two ranks ever race on record.json."""
        resumed = False
        for turn in (0, 1):
            err = None
            if (self.rank == 0) == (turn == 0):
                try:
                    resumed = store.open(record)
                except BenchError as e:
                    err = str(e)
            self.raise_any(err)
        return resumed

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def setup(distributed_flag: bool, requested_device: str, environ: Mapping[str, str] | None = None) -> Comm | None:
    """The process group when launched by torchrun (or asked for with ``--distributed``), else None."""
    env = env_from(environ)
    if env is None:
        if distributed_flag:
            raise BenchError("--distributed needs the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); " + LAUNCH_HINT)
        return None
    return Comm(env, rank_device(requested_device, env))
