"""Shared bits of the speed scripts: arguments, the shipped model and images, and a side-by-side
timer that interleaves the contenders over repeats (these machines are noisy, so only a ratio
measured in one run means anything)."""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch


def parser(doc: str, *, n: int, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--defense", default="standard",
                   help="defense registry name (e.g. standard, rn18_aa_example); must be deterministic")
    p.add_argument("--n", type=int, default=n, help="number of CIFAR-10 test images (first:N)")
    p.add_argument("--repeats", type=int, default=repeats, help="interleaved timing repeats")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    return p


def setup(args: argparse.Namespace):
    """(defense, x, y) on the device: the shipped classifier and the embedded test images."""
    from benchmark.build import make_defense
    from benchmark.data import load_eval_set

    if args.threads:
        torch.set_num_threads(args.threads)
    defense = make_defense(args.defense, dataset="cifar10", device=args.device)
    ev = load_eval_set("cifar10", f"first:{args.n}")
    return defense, ev.images.to(args.device), ev.labels.to(args.device)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def race(contenders: dict[str, Callable[[], object]], repeats: int, device: str,
         clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Time of each contender per repeat, alternating the order each repeat (ABBA...).

    ``clock`` is wall time by default; ``time.process_time`` (this process's CPU seconds) is the
    steadier measure of CPU work on a machine shared with a long job at higher priority."""
    names = list(contenders)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            sync(device)
            t0 = clock()
            contenders[k]()
            sync(device)
            times[k].append(clock() - t0)
    return times


def report(times: dict[str, list[float]], ours: str, ref: str, goal: float) -> float:
    """Print per-contender medians and the ratio ours/ref (ratio of medians, with the min-max of
    the per-repeat ratios); returns the ratio of medians."""
    for k, v in times.items():
        print(f"  {k:>10}: median {statistics.median(v):.3f} s  (min {min(v):.3f}, max {max(v):.3f}, "
              f"{len(v)} repeats)")
    per = [a / b for a, b in zip(times[ours], times[ref])]
    ratio = statistics.median(times[ours]) / statistics.median(times[ref])
    verdict = "OK" if ratio <= goal else "ABOVE GOAL"
    print(f"RATIO {ours}/{ref} = {ratio:.3f}  (per-repeat min {min(per):.3f}, max {max(per):.3f}; "
          f"goal <= {goal:.2f}: {verdict})")
    return ratio
