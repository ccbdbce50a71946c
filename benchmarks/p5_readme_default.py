"""P5: wall time of the README's first command, `bench run --defense atop_gan --threat linf`.

Goal: <= 5 min on 2 CPU cores. Unlike P1-P4 there is no reference to race: the figure is the
wall time of the whole command as a user runs it (a fresh process: imports, model and data
loading, every attack of the default battery, the record written), against the 300 s goal.
Each repeat writes to its own temporary run directory, so no repeat resumes another's work.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 300.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--defense", default="atop_gan")
    p.add_argument("--threat", default="linf")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--extra", default="", help="extra `bench run` arguments, e.g. '--device cuda'")
    a = p.parse_args(argv)
    walls: list[float] = []
    summary: dict[str, object] = {}
    for r in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "benchmark.cli", "run", "--defense", a.defense, "--threat", a.threat,
                   "--out", str(out), *a.extra.split()]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
                print(f"error: `{' '.join(cmd)}` exited {proc.returncode}", file=sys.stderr)
                return 1
            rec = json.loads((out / "record.json").read_text()) if (out / "record.json").is_file() else {}
            summary = {k: rec.get(k) for k in ("defense", "subset", "n", "scale", "scale_limits", "attacks") if k in rec}
            print(f"repeat {r + 1}: {walls[-1]:.1f} s", flush=True)
            if r == 0:
                print(proc.stdout.strip()[-3000:])
    med = statistics.median(walls)
    print(f"P5 `bench run --defense {a.defense} --threat {a.threat} {a.extra}`: median {med:.1f} s "
          f"(min {min(walls):.1f}, max {max(walls):.1f}, {len(walls)} repeat(s)); "
          f"RATIO to the {GOAL_S:.0f} s goal = {med / GOAL_S:.3f} ({'OK' if med <= GOAL_S else 'ABOVE GOAL'})")
    if summary:
        print(f"run: {json.dumps(summary, default=str)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
