"""The ``bench`` command line.

Every bad input becomes one ``error: ...`` line on stderr and exit code 2 (a BenchError);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from . import compat as _compat  # noqa: F401  (before anything imports torchvision)
from .errors import BenchError

TRAIN_KINDS = ("classifier", "atop", "ddpm", "addt")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _parse_set(values: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise BenchError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


# --------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from .build import make_defense, resolve_device
    from .data import load_eval_set
    from .runner import evaluate_clean
    from .stats import clopper_pearson

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in attacks if a != "clean"]
    if unknown:
        raise BenchError(f"unknown attack {unknown[0]!r}; available: clean")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # nothing should use it; makes stray global draws reproducible too
    evalset = load_eval_set(args.dataset, args.subset, source=args.source, root=args.data_root)
    defense = make_defense(args.defense, dataset=args.dataset, device=device, checkpoint=args.checkpoint)
    con = _console()
    con.print(f"[bold]{args.defense}[/] on {evalset.dataset} ({evalset.source}, subset {evalset.subset}, "
              f"n={len(evalset)}); noise: {defense.describe_noise()}; device {device}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=con, transient=False, disable=args.quiet) as progress:
        task = progress.add_task("clean", total=len(evalset))
        result = evaluate_clean(defense, evalset, batch_size=args.batch_size, device=device, seed=args.seed,
                                on_batch=lambda b, k: progress.advance(task, k))
    table = Table(title=f"{args.defense} | {evalset.dataset} {evalset.source} {evalset.subset}")
    for col in ("attack", "n", "correct", "accuracy", "95% CI (Clopper-Pearson)", "wall s"):
        table.add_column(col, justify="right" if col != "attack" else "left")
    lo, hi = clopper_pearson(result.correct, result.n)
    table.add_row("clean", str(result.n), str(result.correct), f"{100 * result.correct / result.n:.1f}%",
                  f"[{100 * lo:.1f}, {100 * hi:.1f}]", f"{result.wall_s:.1f}")
    con.print(table)
    return 0


# -------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .registry import ATTACKS, CLASSIFIERS, DEFENSES, load_builtins

    con = _console()
    what = args.what
    if what in ("defenses", "attacks", "classifiers"):
        load_builtins()
        reg = {"defenses": DEFENSES, "attacks": ATTACKS, "classifiers": CLASSIFIERS}[what]
        table = Table(title=what)
        if what == "defenses":
            cols = ("name", "datasets", "stochastic", "summary")
            rows = [(e.name, ", ".join(e.meta.get("datasets", ())), str(e.meta.get("stochastic", "?")),
                     e.meta.get("summary") or e.doc) for e in reg]
            rows.append(("robustbench:<Name>", "cifar10, cifar100, imagenet", "False",
                         "any RobustBench zoo model (download online, --checkpoint PATH offline)"))
        elif what == "attacks":
            cols = ("name", "threat", "defaults", "source")
            rows = [(e.name, str(e.meta.get("threat", "")),
                     ", ".join(f"{k}={v}" for k, v in (e.meta.get("defaults") or {}).items()),
                     str(e.meta.get("source", e.doc))) for e in reg]
            rows.insert(0, ("clean", "-", "no attack", "-"))
        else:
            cols = ("name", "dataset", "summary")
            rows = [(e.name, str(e.meta.get("dataset", "")), e.doc) for e in reg]
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*r)
        con.print(table)
        return 0
    from .data import dataset_rows, subset_rows

    rows_d = dataset_rows() if what == "datasets" else subset_rows()
    table = Table(title=what)
    cols = list(rows_d[0]) if rows_d else []
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows_d:
        table.add_row(*(str(r[c]) for c in cols))
    con.print(table)
    return 0


# ------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    import importlib

    mod = importlib.import_module(f"benchmark.train.{args.kind}")
    out = mod.main(args.config, device=args.device, out_dir=args.out, data_root=args.data_root,
                   resume=not args.no_resume, overrides=_parse_set(args.set))
    _console().print(f"[green]done[/]: {out}")
    return 0


# ------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="purifybench: honest robustness evaluation of "
                                "purification defenses")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="evaluate a defense")
    r.add_argument("--defense", required=True, help="registry name, or robustbench:<Name>")
    r.add_argument("--dataset", default="cifar10")
    r.add_argument("--subset", default=None, help="first:N | random:N:SEED | diffpure | ids:FILE | all")
    r.add_argument("--source", default=None, help="image source of the dataset (see `bench list datasets`)")
    r.add_argument("--data-root", default=None, help="folder for canonical datasets")
    r.add_argument("--attacks", default="clean")
    r.add_argument("--checkpoint", default=None, help="local checkpoint for robustbench:<Name> etc.")
    r.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    r.add_argument("--batch-size", type=int, default=100)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list registered things")
    ls.add_argument("what", choices=("defenses", "attacks", "datasets", "subsets", "classifiers"))
    ls.set_defaults(func=cmd_list)

    t = sub.add_parser("train", help="train a classifier, purifier or diffusion model from a YAML config")
    t.add_argument("kind", choices=TRAIN_KINDS)
    t.add_argument("--config", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", default=None, help="output directory (default: from the config)")
    t.add_argument("--data-root", default=None, help="folder holding the unpacked training data")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
