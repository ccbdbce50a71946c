"""P6: every registered defense's default run, `bench run --defense D --threat linf`, timed.

Each defense runs as a fresh process at the default CPU scale into a temporary folder (nothing is
stored under runs/), and the script prints a table: defense, wall time (goal <= 300 s on 2 idle
cores), images, attacks with their budgets, and what the scale cut beyond the generic cpu limits
(the record's ``scale_limits``, see benchmark/scalecut.py). A defense for another dataset runs on
its first dataset with images on the machine (``--dataset``); a defense whose weights are not on this machine (authors'
checkpoints that need a download or ``--defense-opt weights=PATH``) says so instead of a time.
``--dry-run`` prints each default's projection (benchmark/cost.py) instead of running it.

Run:  python benchmarks/p6_default_runs.py [--defenses a,b] [--dry-run] [--timeout 900]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = ("cifar10", "cifar100", "imagenette")  # embedded or packed in the repository
sys.path.insert(0, str(ROOT))


def defenses() -> list[tuple[str, str]]:
    from benchmark.registry import DEFENSES, load_builtins

    load_builtins()
    def dataset(e) -> str:  # the first dataset whose images are on every machine (imagenet needs a folder)
        ds = tuple(e.meta.get("datasets") or ("cifar10",))
        return next((d for d in ds if d in OFFLINE), ds[0])

    return [(e.name, dataset(e)) for e in DEFENSES]


def budget(rec: dict) -> str:
    from benchmark.report import budget_text

    return "; ".join(f"{a['attack']} {budget_text(a)}" for a in rec.get("attacks", []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--defenses", default=None, help="comma-separated subset (default: every registered defense)")
    p.add_argument("--dry-run", action="store_true", help="projections only")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is reported as too slow")
    a = p.parse_args()
    from benchmark.scalecut import cut_text

    chosen = set(a.defenses.split(",")) if a.defenses else None
    rows = []
    for name, dataset in defenses():
        if chosen is not None and name not in chosen:
            continue
        args = ["run", "--defense", name, "--threat", "linf", "--dataset", dataset]
        print(f"== bench {' '.join(args)}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            extra = ["--dry-run", "--dry-run-json"] if a.dry_run else ["--out", str(out), "--quiet"]
            t0 = time.perf_counter()
            try:
                r = subprocess.run([sys.executable, "-m", "benchmark.cli", *args, *extra], cwd=ROOT,
                                   capture_output=True, text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                rows.append((name, f"> {a.timeout:.0f} s (stopped)", "-", "-", "-"))
                continue
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                why = "weights absent offline: " if any(w in last.lower() for w in ("weights", "checkpoint", "download")) else ""
                rows.append((name, f"not run ({why}{last[:160]})", "-", "-", "-"))
                continue
            if a.dry_run:
                d = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("DRYRUN_JSON "))[12:])
                rows.append((name, f"projected {d['total_s']:.0f} s (probe run {wall:.0f} s)", str(d["n"]),
                             ", ".join(d["attacks"]), "-"))
                continue
            rec = json.loads((out / "record.json").read_text())
            rows.append((name, f"{wall:.0f} s", str(rec["n"]), budget(rec), cut_text(rec) or "none"))
        print(f"   {rows[-1][1]}", flush=True)
    print("\n| defense | wall time | images | attacks | scale cut (beyond the generic cpu limits) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
