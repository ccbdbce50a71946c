"""P7: `bench run ... --dry-run` projections against measured wall times, and projections alone.

For each run in ``--runs`` (named sets below, or ``--args '...'`` for one of your own) this script
starts ``python -m benchmark.cli run ARGS --dry-run`` as a fresh process (its projection: setup +
attack passes, see benchmark/cost.py), then, unless ``--project-only``, the same command for real
into a temporary folder, timing the whole process, and prints projected, measured and the ratio
projected/measured (goal: within 0.75-1.25). A run that is only projected (the published protocols
at full size, hours on a CPU) prints its projection with ``measured -``.

Run:  python benchmarks/p7_dry_run.py                      # the measured set (README runs + one protocol)
      python benchmarks/p7_dry_run.py --runs full --project-only   # published protocols at full size
      python benchmarks/p7_dry_run.py --args '--defense standard --threat linf'
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DIFF = "--probe-batch 2 --memory-format contiguous --assume-robust 0.5"
RUNS = {
    # the README's default runs (CPU scale)
    "readme": ["--defense atop_gan --threat linf", "--defense standard --threat linf"],
    # a full published protocol (PGD-200 + EOT-20) on a subset that fits in minutes of 2 idle cores;
    # without the post-run probes, which on this protocol cost as much again (16,000 gradient passes
    # per sampled survivor, counted by the projection; the README runs check their count)
    "protocol": ["--defense atop_gan --protocol lee_kim_pgd200_eot20 --subset first:32 --no-diagnostics"],
    # the published protocols at full size: projection only (hours to days on a CPU; size a GPU job)
    # (a diffusion defense probed on 2 images, contiguous layout, half the attacked images surviving
    # each component: the layout probe and the survivor pilot would cost minutes of 100-step passes)
    "full": [f"--defense {d} --protocol {p} {DIFF}" for d, p in (
                 ("diffpure", "lee_kim_pgd200_eot20"), ("addt", "lee_kim_pgd200_eot20"),
                 ("diffpure", "diffpure_autoattack"), ("addt", "addt_pgd20_eot10"))]
            + ["--defense atop_gan --protocol lee_kim_pgd200_eot20", "--defense atop_gan_rt2 --protocol atop_table7"],
}
RUNS["measured"] = RUNS["readme"] + RUNS["protocol"]


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench(args: list[str], timeout: float, clock: str = "wall") -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, or with clock cpu the child's CPU seconds; the finished process)."""
    t0, c0 = time.perf_counter(), _child_cpu()
    r = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    return (time.perf_counter() - t0 if clock == "wall" else _child_cpu() - c0), r


def projection(args: list[str], timeout: float, clock: str = "wall") -> dict:
    _, r = bench([*args, "--dry-run", "--dry-run-json", "--dry-run-clock", clock], timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    for line in r.stdout.splitlines():
        if not line.startswith("DRYRUN_JSON "):
            print("    " + line)
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("DRYRUN_JSON "))[12:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="measured", help=f"one of {', '.join(RUNS)}")
    p.add_argument("--args", action="append", default=[], help="bench run arguments of a run to add (repeatable)")
    p.add_argument("--project-only", action="store_true", help="print projections, run nothing")
    p.add_argument("--timeout", type=float, default=4 * 3600)
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="cpu: probe and compare CPU seconds (process time) instead of wall time; steadier on a "
                        "machine shared with other jobs (checks the pass counts, not the wall-time claim)")
    a = p.parse_args()
    runs = (RUNS[a.runs] if not a.args else []) + a.args
    rows = []
    for text in runs:
        args = shlex.split(text)
        print(f"== bench run {text}", flush=True)
        try:
            d = projection(args, a.timeout, a.clock)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rows.append((text, None, None, f"no projection: {e}"))
            continue
        measured = None
        if not a.project_only:
            with tempfile.TemporaryDirectory() as tmp:
                wall, r = bench([*args, "--out", str(Path(tmp) / "run"), "--quiet"], a.timeout, a.clock)
            measured = wall if r.returncode == 0 else None
            if r.returncode != 0:
                print("    run failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
        rows.append((text, d, measured, ""))
        if measured:
            print(f"    measured {measured:.1f} s ({a.clock}); ratio projected/measured {d['total_s'] / measured:.2f}",
                  flush=True)
    print(f"\nclock: {a.clock}")
    print("\n| run | images (attacked) | projected fwd / grad image-passes | projected wall | upper bound | "
          "measured wall | ratio projected/measured |")
    print("|---|---|---|---|---|---|---|")
    for text, d, m, why in rows:
        if d is None:
            print(f"| `{text}` | - | - | {why} | - | - | - |")
            continue
        ratio = f"{d['total_s'] / m:.2f}" if m else "-"
        print(f"| `{text}` | {d['n']} ({d['attacked']:.0f}) | {d['fwd_passes']:,.0f} / {d['grad_passes']:,.0f} | "
              f"{d['total_s']:.0f} s | {d['upper_total_s']:.0f} s | {f'{m:.0f} s' if m else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
