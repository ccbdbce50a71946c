"""The ``bench`` command line.

Every bad input becomes one ``error: ...`` line on stderr and exit code 2 (a BenchError);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
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
def _parse_eps(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise BenchError(f"--eps expects a number such as 8/255 or 0.5, got {text!r}") from None


def spec_from_args(args: argparse.Namespace):
    from .runner import RunSpec, validate_spec

    attacks = None
    if args.attacks:
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    scale = args.scale or ("full" if args.device.startswith("cuda") or args.protocol else "cpu")
    spec = RunSpec(defense=args.defense, dataset=args.dataset, threat=args.threat, subset=args.subset,
                   source=args.source, attacks=attacks, eps=_parse_eps(args.eps), steps=args.steps, eot=args.eot,
                   protocol=args.protocol, scale=scale, eval_repeats=args.eval_repeats, batch_size=args.batch_size,
                   seed=args.seed, checkpoint=args.checkpoint, data_root=args.data_root)
    if args.protocol:
        from .protocols import apply_protocol

        spec = apply_protocol(spec, args.protocol, explicit={k for k in ("subset", "attacks", "eps", "steps", "eot", "eval_repeats", "dataset", "threat") if _given(args, k)})
    if spec.attacks is not None:
        from .registry import ATTACKS, load_builtins

        load_builtins()
        for a in spec.attacks:
            if a != "clean":
                ATTACKS.get(str(spec.attack_overrides.get(a, {}).get("preset", a)))
    return validate_spec(spec)


def _given(args: argparse.Namespace, key: str) -> bool:
    return key in getattr(args, "_explicit", set())


def default_out(spec) -> str:
    from .config import config_hash

    safe = spec.defense.replace(":", "_").replace("/", "_").replace(".py", "")
    return f"runs/{safe}-{spec.dataset}-{spec.threat}-{spec.scale}-{config_hash(spec)[:8]}"


def cmd_run(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .build import make_defense, resolve_device
    from .report import summary_table
    from .results import check_writable
    from .runner import load_spec_evalset, run

    spec = spec_from_args(args)
    device = resolve_device(args.device)
    out = args.out or default_out(spec)
    evalset = load_spec_evalset(spec)
    torch.manual_seed(spec.seed)  # nothing should use it; makes stray global draws reproducible too
    defense = make_defense(spec.defense, dataset=spec.dataset, device=device, checkpoint=spec.checkpoint)
    check_writable(out)  # only now: a bad defense/dataset/option leaves no folder behind
    con = _console()
    con.print(f"[bold]{spec.defense}[/] on {evalset.dataset} ({evalset.source}, subset {evalset.subset}, "
              f"n={len(evalset)}); threat {spec.threat}; scale {spec.scale}; noise: {defense.describe_noise()}; "
              f"device {device}; results: {out}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    tasks: dict[str, Any] = {}
    with Progress(*columns, console=con, transient=False, disable=args.quiet) as progress:
        def on_progress(name: str, batch: int, k: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task("images" if name == "batch" else name, total=len(evalset))
            progress.advance(tasks[name], k)

        try:
            result = run(spec, out=out, device=device, defense=defense, evalset=evalset, on_progress=on_progress)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
            progress.stop()
            print(f"interrupted: finished batches are saved in {out}; run the same command again to resume",
                  file=sys.stderr)
            # CPython may still end the process *by* SIGINT (exit -2) when the interrupt surfaced inside
            # code run through PyRun_*; every result is already on disk atomically, so leave with 130 now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
    con.print(summary_table(result.record, result.summary))
    if result.resumed:
        con.print(f"(resumed from {out})")
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


# ------------------------------------------------------------------- leaderboard
def _wide_console():
    """A console wide enough for board tables when stdout is not a terminal (CI logs, pipes)."""
    import os

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboards.board import build_board, render

    from .results import atomic_write_text

    tables, notes = build_board(args.dataset, args.threat, args.results)
    text = render(tables, notes, args.format, title=f"purifybench leaderboard: {args.dataset}")
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} ({len(tables)} table(s))")
    else:
        sys.stdout.write(text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from leaderboards.gate import check, diff_table, load_baseline

    rows = check(load_baseline(args.baseline), args.results)
    con = _wide_console()
    con.print(diff_table(rows))
    failed = [r for r in rows if r.failed]
    if failed:
        con.print(f"[red]FAIL[/]: {len(failed)} of {len(rows)} baseline number(s) regressed")
        return 1
    con.print(f"[green]ok[/]: {len(rows)} baseline number(s) within tolerance")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from leaderboards.reproduce import report_tables, reproduce

    con = _wide_console()
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()] if args.defenses else None
    scale = args.scale or ("full" if args.device.startswith("cuda") else "cpu")
    rep = reproduce(args.protocol, scale=scale, defenses=defenses, device=args.device, results=args.results,
                    batch_size=args.batch_size, seed=args.seed, data_root=args.data_root,
                    on_note=None if args.quiet else (lambda m: con.print(m, markup=False)))
    for t in report_tables(rep):
        con.print(t)
    for n in rep.notes:
        con.print(f"note: {n}", markup=False)
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

    r = sub.add_parser("run", help="evaluate a defense under attack")
    r.add_argument("--defense", required=True, help="registry name, robustbench:<Name>, pkg.mod:fn or file.py:fn")
    r.add_argument("--threat", default="linf", help="linf | l2 | stadv (picks the default battery and eps)")
    r.add_argument("--dataset", default="cifar10")
    r.add_argument("--subset", default=None, help="first:N | random:N:SEED | diffpure | ids:FILE | all")
    r.add_argument("--source", default=None, help="image source of the dataset (see `bench list datasets`)")
    r.add_argument("--data-root", default=None, help="folder for canonical datasets")
    r.add_argument("--attacks", default=None, help="comma-separated presets (see `bench list attacks`); "
                   "'clean' alone evaluates clean accuracy only")
    r.add_argument("--eps", default=None, help="override eps, e.g. 8/255 or 0.5")
    r.add_argument("--steps", type=int, default=None, help="override attack steps")
    r.add_argument("--eot", type=int, default=None, help="override EOT draws")
    r.add_argument("--protocol", default=None, help="a published protocol (configs/protocols/NAME.yaml)")
    r.add_argument("--scale", default=None, help="full | cpu | smoke (default: cpu on a CPU, full on a GPU or with --protocol)")
    r.add_argument("--eval-repeats", type=int, default=1, help="k forward passes on each final example")
    r.add_argument("--checkpoint", default=None, help="local checkpoint for robustbench:<Name> etc.")
    r.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default=None, help="run directory (default runs/<defense>-<dataset>-<threat>-<scale>-<hash>)")
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

    lb = sub.add_parser("leaderboard", help="our stored runs beside the published tables")
    lb.add_argument("--dataset", required=True, choices=("cifar10", "cifar100", "imagenette", "imagenet"))
    lb.add_argument("--threat", default=None, choices=("linf", "l2", "stadv"), help="one threat (default: all)")
    lb.add_argument("--format", default="md", choices=("md", "csv", "html", "json"))
    lb.add_argument("--out", default=None, help="write to FILE instead of stdout")
    lb.add_argument("--results", default="runs", help="folder searched for run directories (default runs/)")
    lb.set_defaults(func=cmd_leaderboard)

    ck = sub.add_parser("check", help="CI regression gate: stored numbers against a baseline YAML")
    ck.add_argument("--baseline", required=True, help="YAML with entries: defense, dataset, threat, attack, "
                    "scale, expected, tolerance (percent)")
    ck.add_argument("--results", default="runs", help="folder searched for run directories (default runs/)")
    ck.set_defaults(func=cmd_check)

    rp = sub.add_parser("reproduce", help="run a published protocol's defenses and judge its claims")
    rp.add_argument("protocol", help="configs/protocols/NAME.yaml name, or a path to a protocol YAML")
    rp.add_argument("--scale", default=None, help="full | cpu | smoke (default: cpu on a CPU, full on a GPU)")
    rp.add_argument("--defenses", default=None, help="comma-separated subset of the protocol's defenses")
    rp.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    rp.add_argument("--results", default="runs", help="run directories go to RESULTS/reproduce/PROTOCOL/")
    rp.add_argument("--data-root", default=None, help="folder for canonical datasets")
    rp.add_argument("--batch-size", type=int, default=64)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--quiet", action="store_true", help="no progress notes")
    rp.set_defaults(func=cmd_reproduce)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._explicit = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
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
