"""The Python API: evaluate a defense (a registered name, your own ``nn.Module`` or ``Defense``)
and read the leaderboard, from a notebook. ``bench run`` goes through :func:`prepare_run` too.

In the spirit of RobustBench's ``benchmark()`` and AutoAttack's ``run_standard_evaluation``:
one call, the same runs (record, hash, per-sample rows, intervals) the CLI writes.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from defenses.base import Defense, ModuleDefense
from leaderboards.board import build_board

from .build import PROBE_IMAGES, _probe_stochastic, make_defense, resolve_device
from .errors import BenchError
from .protocols import apply_protocol
from .results import RunStore, check_writable
from .runner import RunSpec, default_run_dir, load_spec_evalset, run, validate_spec


def default_scale(device: str, protocol: bool = False) -> str:
    """The scale when none is asked for: full on a GPU (or for a protocol run), cpu on a CPU."""
    return "full" if str(device).startswith("cuda") or protocol else "cpu"


def prepare_run(spec: RunSpec, device: torch.device, out: str | Path, defense: Any = None, *,
                check_out: bool = True) -> tuple[Any, Any]:
    """spec -> images -> defense -> writable check, the one order every entry point uses
    (a bad defense, dataset or option leaves no folder behind; ``check_out=False`` for a dry run,
    which writes nothing). Returns (evalset, defense)."""
    evalset = load_spec_evalset(spec)
    torch.manual_seed(spec.seed)  # nothing should use it; makes stray global draws reproducible too
    if defense is None:
        defense = make_defense(spec.defense, dataset=spec.dataset, device=device, checkpoint=spec.checkpoint,
                               options=spec.defense_options, probe_images=evalset.images)
    if check_out:
        check_writable(out)
    return evalset, defense


@dataclass
class Evaluation:
    """A finished run: its folder, record (what ran) and summary (accuracies with 95% intervals)."""

    dir: Path
    record: dict[str, Any]
    summary: dict[str, Any]
    resumed: bool

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Per-sample rows (id, label, clean predictions, each attack's predictions and norm)."""
        return RunStore(self.dir).read_samples()

    def table(self) -> pd.DataFrame:
        """One row per attack (and the worst case): n, correct, accuracy and its 95% interval, in percent."""
        entries = {**self.summary["attacks"], **({"worst case": self.summary["worst_case"]} if "worst_case" in self.summary else {})}
        return pd.DataFrame([{"attack": k, "n": e["n"], "correct": e["correct"], "accuracy": 100 * e["accuracy"],
                              "ci95_lo": 100 * e["ci95"][0], "ci95_hi": 100 * e["ci95"][1]} for k, e in entries.items()])


def _as_defense(obj: Any, name: str, device: torch.device, stochastic: bool | None, probe: torch.Tensor) -> Defense:
    """A user's object as a Defense; an nn.Module is probed for hidden randomness on ``probe``
    (the run's own images), as a plugin module is (:func:`benchmark.build._probe_stochastic`)."""
    if isinstance(obj, Defense):
        return obj.to(device).freeze()
    if isinstance(obj, nn.Module):
        obj = obj.to(device).eval()
        st = _probe_stochastic(obj, device, probe[:PROBE_IMAGES], name) if stochastic is None else stochastic
        return ModuleDefense(obj, name=name, stochastic=st, info={"python_object": type(obj).__name__}).freeze()
    raise BenchError(f"defense must be a registered name, a Defense or an nn.Module, got {type(obj).__name__}")


def evaluate(defense: str | nn.Module | Defense, *, threat: str = "linf", dataset: str = "cifar10",
             subset: str | None = None, attacks: list[str] | None = None, protocol: str | None = None,
             scale: str | None = None, eps: float | None = None, steps: int | None = None, eot: int | None = None,
             device: str = "cpu", out: str | Path | None = None, seed: int = 0, batch_size: int = 64,
             name: str | None = None, stochastic: bool | None = None, **defense_options: Any) -> Evaluation:
    """Attack ``defense`` and return the stored run (resumed if ``out`` holds the same run).

    A registered name runs exactly as ``bench run --defense NAME`` (same folder by default,
    same numbers); an object is recorded as ``python:<name or class>`` and, without ``out``,
    goes to a fresh temporary folder (two objects of one class must not share a run)."""
    dev = resolve_device(device)
    obj = None if isinstance(defense, str) else defense
    label = defense if isinstance(defense, str) else f"python:{name or type(defense).__name__}"
    spec = RunSpec(defense=label, dataset=dataset, threat=threat, subset=subset, attacks=attacks, eps=eps,
                   steps=steps, eot=eot, protocol=protocol, scale=scale or default_scale(device, protocol is not None),
                   batch_size=batch_size, seed=seed, defense_options=dict(defense_options))
    if protocol is not None:
        given = {k for k, v in (("subset", subset), ("attacks", attacks), ("eps", eps), ("steps", steps),
                                ("eot", eot)) if v is not None}
        spec = apply_protocol(spec, protocol, explicit=given)  # dataset and threat: the protocol's
    validate_spec(spec)
    if out is None:
        out = default_run_dir(spec) if obj is None else tempfile.mkdtemp(prefix="purifybench-")
    built = None if obj is None else _as_defense(obj, label, dev, stochastic, load_spec_evalset(spec).images)
    evalset, built = prepare_run(spec, dev, out, built)
    res = run(spec, out=out, device=dev, defense=built, evalset=evalset)
    return Evaluation(Path(res.dir), res.record, res.summary, res.resumed)


def board(dataset: str = "cifar10", threat: str | None = None, results: str | Path = "runs") -> pd.DataFrame:
    """The leaderboard (our stored runs beside the published tables) as one DataFrame."""
    tables, _ = build_board(dataset, threat, str(results))
    frames = [t.frame.assign(threat=t.threat, eps=t.eps, scale=t.scale) for t in tables]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
