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
from .commands import TRAIN_KINDS  # error hints spell `bench train` from the same definitions
from .errors import BenchError
from .threats import THREATS, parse_fraction

# The imports inside the cmd_* functions are lazy on purpose, not for import order (the layers
# allow them at module level, see .importlinter): `bench --help` and `bench list` must not pay for
# torch, the defenses' registration and the optional heavy libraries (robustbench, pyautoattack,
# diffusers) that the run and train commands pull in.


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _parse_set(values: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    from .config import load_yaml_text

    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise BenchError(f"{flag} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = load_yaml_text(v, f"{flag} {item!r}")
    return out


def _seed(text: str) -> int:
    """argparse type of every --seed: the range check of :func:`benchmark.seeds.check_seed`."""
    from .seeds import check_seed

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    except BenchError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--seed ", "")) from None


def _positive_int(what: str):
    """argparse type of a count (--batch-size, --steps, --eot, --eval-repeats): an integer >= 1."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a positive integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{what} must be positive (an integer >= 1), got {v}")
        return v

    return parse


def _empty_flag(args: argparse.Namespace, argv: Sequence[str]) -> str | None:
    """The first flag given an empty value (``--out ""``): never a silent "use the default"."""
    for k, v in vars(args).items():
        if v == "" or (isinstance(v, list) and "" in v):
            flag = "--" + k.replace("_", "-")
            return flag if flag in argv or any(a.startswith(flag + "=") for a in argv) else k
    return None


# --------------------------------------------------------------------------- run
def _parse_eps(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_fraction(text)
    except (ValueError, ZeroDivisionError):
        raise BenchError(f"--eps expects a number such as 8/255 or 0.5, got {text!r}") from None


def spec_from_args(args: argparse.Namespace):
    from .runner import RunSpec, validate_spec

    attacks = _names(args.attacks, "--attacks")
    from .api import default_scale

    scale = args.scale or default_scale(args.device, bool(args.protocol))
    spec = RunSpec(defense=args.defense, dataset=args.dataset, threat=args.threat, subset=args.subset,
                   source=args.source, attacks=attacks, eps=_parse_eps(args.eps), steps=args.steps, eot=args.eot,
                   protocol=args.protocol, scale=scale, eval_repeats=args.eval_repeats, batch_size=args.batch_size,
                   seed=args.seed, checkpoint=args.checkpoint, data_root=args.data_root,
                   precision=getattr(args, "precision", "fp32"),
                   attack_all=bool(getattr(args, "attack_all", False)),
                   memory_format=getattr(args, "memory_format", "auto"),
                   compile=bool(getattr(args, "compile", False)),
                   diagnostics=not bool(getattr(args, "no_diagnostics", False)),
                   defense_options=_parse_set(getattr(args, "defense_opt", None) or [], "--defense-opt"))
    if args.protocol:
        from .protocols import apply_protocol

        spec = apply_protocol(spec, args.protocol, explicit={k for k in ("subset", "attacks", "eps", "steps", "eot", "eval_repeats", "dataset", "threat") if _given(args, k)})
    from .scalecut import apply_scale_cut

    apply_scale_cut(spec)  # before the run folder's hash: a defense's cut at this scale is other work
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
    """The default run folder (its home is :func:`benchmark.runner.default_run_dir`)."""
    from .runner import default_run_dir

    return default_run_dir(spec)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .api import prepare_run
    from .build import resolve_device
    from .distributed import setup as dist_setup, shard_samples
    from .report import flag_lines, summary_table
    from .progress import LineReporter, stderr_is_terminal
    from .runner import build_attacks, run

    spec = spec_from_args(args)
    comm = dist_setup(args.distributed, args.device)  # under torchrun: this rank's process group, else None
    device = comm.device if comm is not None else resolve_device(args.device)
    out = args.out or default_out(spec)
    dry = bool(getattr(args, "dry_run", False))
    # images, defense, then the writable check (a dry run prices the run and leaves nothing behind)
    evalset, defense = prepare_run(spec, device, out, check_out=not dry)
    if dry:
        return _dry_run(args, spec, defense, evalset, device)
    con = _console()
    rank, world = (comm.rank, comm.world_size) if comm is not None else (0, 1)
    n_mine = shard_samples(len(evalset), spec.batch_size, rank, world)
    if rank == 0:
        con.print(f"[bold]{spec.defense}[/] on {evalset.dataset} ({evalset.source}, subset {evalset.subset}, "
                  f"n={len(evalset)}); threat {spec.threat}; scale {spec.scale}; noise: {defense.describe_noise()}; "
                  f"device {device}; results: {out}"
                  + (f"; sharded over {world} ranks ({comm.backend}), rank 0 attacks {n_mine}" if comm else ""))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    tasks: dict[str, Any] = {}
    # not a terminal (a file, a pipe, a CI log): plain lines instead of bars that print nothing there
    lines = None if args.quiet or rank != 0 or stderr_is_terminal() else LineReporter(
        n_mine, [a.name for a in build_attacks(spec, defense.stochastic)])
    with Progress(*columns, console=con, transient=False, disable=args.quiet or rank != 0 or lines is not None) as progress:
        def on_progress(name: str, batch: int, k: int) -> None:
            if lines is not None:
                lines(name, batch, k)
                return
            if name not in tasks:
                tasks[name] = progress.add_task("images" if name == "batch" else name, total=n_mine)
            progress.advance(tasks[name], k)

        try:
            result = run(spec, out=out, device=device, defense=defense, evalset=evalset, on_progress=on_progress,
                         comm=comm)
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
    if comm is not None:
        comm.close()
        if rank != 0:  # its rows went to rank 0, which prints the table
            return 0
    con.print(summary_table(result.record, result.summary))
    for line in flag_lines(result.summary):
        con.print(line, markup=False, highlight=False)
    if result.record.get("precision_check"):
        pc = result.record["precision_check"]
        con.print(f"precision: attack gradients in {pc['used']} (requested {pc['requested']}; {pc['requested']}-vs-fp32 input-gradient "
                  f"cosine min {pc['min_cosine']}, mean {pc['mean_cosine']}, threshold {pc['threshold']}"
                  + (f"; {pc['error']}" if pc.get("error") else "") + "); reported accuracies: fp32 forward passes")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.resumed:
        con.print(f"(resumed from {out})")
    return 0


def _dry_run(args: argparse.Namespace, spec, defense, evalset, device) -> int:
    import json

    from .cost import dry_run, report_lines

    robust = getattr(args, "assume_robust", None)
    if robust is not None and not 0.0 <= robust <= 1.0:
        raise BenchError(f"--assume-robust must be a fraction in [0, 1], got {robust}")
    pb = getattr(args, "probe_batch", None)
    if pb is not None and pb <= 0:
        raise BenchError(f"--probe-batch must be positive, got {pb}")
    pr = dry_run(spec, defense, evalset, device, robust=robust, probe_batch=pb,
                 clock=getattr(args, "dry_run_clock", "wall"))
    for line in report_lines(pr, spec, device):
        print(line)
    if getattr(args, "dry_run_json", None):
        print("DRYRUN_JSON " + json.dumps(pr.to_dict()))
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

    from pathlib import Path

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise BenchError(f"cannot write training output folder {args.out}: it is a file")
    mod = importlib.import_module(f"benchmark.train.{args.kind}")
    try:
        out = mod.main(args.config, device=args.device, out_dir=args.out, data_root=args.data_root,
                       resume=not args.no_resume, overrides=_parse_set(args.set))
    except OSError as e:  # a folder that cannot be made or written (read-only, full disk): one line
        raise BenchError(f"cannot write {e.filename or args.out or 'the training output'}: {e.strerror or e}") from None
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

    if args.out:
        from .results import check_file_writable

        check_file_writable(args.out)
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

    notes: list[str] = []
    rows = check(load_baseline(args.baseline), args.results, notes)
    con = _wide_console()
    for n in notes:
        con.print(f"note: {n}", markup=False, soft_wrap=True)
    con.print(diff_table(rows))
    failed = [r for r in rows if r.failed]
    if failed:
        con.print(f"[red]FAIL[/]: {len(failed)} of {len(rows)} baseline number(s) moved beyond their tolerance")
        return 1
    con.print(f"[green]ok[/]: {len(rows)} baseline number(s) within tolerance")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from leaderboards.reproduce import report_tables, reproduce

    con = _wide_console()
    defenses = _names(args.defenses, "--defenses")
    from .api import default_scale

    scale = args.scale or default_scale(args.device)
    rep = reproduce(args.protocol, scale=scale, defenses=defenses, device=args.device, results=args.results,
                    batch_size=args.batch_size, seed=args.seed, data_root=args.data_root, n=args.n,
                    attacks=_names(args.attacks, "--attacks"), diagnostics=not args.no_diagnostics,
                    on_note=None if args.quiet else (lambda m: con.print(m, markup=False)))
    for t in report_tables(rep):
        con.print(t)
    for n in rep.notes:
        con.print(f"note: {n}", markup=False)
    return 0


# ------------------------------------------------------------------ plot, quality
def _names(text: str | None, flag: str = "") -> list[str] | None:
    """A comma-separated list of names; None when the flag is absent. ``--attacks ,`` names
    nothing: an error, not a silent "use the default"."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BenchError(f"{flag or 'a list flag'} {text!r} names nothing; leave the flag out for the default")
    return names


def cmd_plot(args: argparse.Namespace) -> int:
    from leaderboards.plots import image_grid, parse_values, plot_accuracy, sweep

    from leaderboards.plots import check_figure_path

    from .results import check_file_writable

    con = _console()
    if args.kind == "grid":
        out = args.out or f"{args.results}/plots/grid-{args.defense.replace('/', '_').replace(':', '_')}-{args.dataset}.png"
        check_file_writable(check_figure_path(out))
        res = image_grid(args.defense, out, defense_options=_parse_set(args.defense_opt, "--defense-opt"), dataset=args.dataset, subset=args.subset, attack=args.attack,
                         threat=args.threat, eps=_parse_eps(args.eps), steps=args.steps, seed=args.seed,
                         device=args.device, data_root=args.data_root)
        con.print(f"wrote {res.path}: {len(res.labels)} image(s) x {len(res.columns)} column(s) "
                  f"({', '.join(res.columns)})", markup=False, soft_wrap=True)
        return 0
    defenses = _names(args.defense, "--defense")
    families = _names(args.family, "--family")
    eps, steps, eot = _parse_eps(getattr(args, "eps", None)), getattr(args, "steps", None), getattr(args, "eot", None)
    who = "-".join(defenses) if defenses else "all"
    out = args.out or f"{args.results}/plots/acc-vs-{args.kind}-{who.replace('/', '_').replace(':', '_')}-{args.dataset}.png"
    check_file_writable(check_figure_path(out))
    if args.sweep:
        if not defenses:
            raise BenchError("--sweep needs --defense NAME[,NAME...]")
        values = parse_values(args.sweep, args.kind)
        for d in defenses:
            sweep(d, args.kind, values, dataset=args.dataset, threat=args.threat, attacks=_names(args.attacks, "--attacks"),
                  subset=args.subset, eps=eps, steps=steps, eot=eot,
                  scale=args.scale or "cpu", batch_size=args.batch_size, seed=args.seed, device=args.device,
                  results=args.results, data_root=args.data_root, scale_step=not args.fixed_step,
                  on_note=None if args.quiet else (lambda m: con.print(m, markup=False, soft_wrap=True)))
    fixed = {k: v for k, v in (("eps", eps), ("steps", steps), ("eot", eot)) if k != args.kind}
    res = plot_accuracy(args.results, args.kind, out, defenses=defenses, dataset=args.dataset, threat=args.threat,
                        families=families, scale=args.scale if not args.sweep else (args.scale or "cpu"),
                        fixed=fixed)
    from .threats import eps_text

    con.print(f"wrote {res.path}: {len(res.curves)} curve(s)", markup=False, soft_wrap=True)
    for c in res.curves:
        pts = ", ".join(f"{eps_text(p.x, c.threat) if args.kind == 'eps' else f'{p.x:g}'}: "
                        f"{p.acc:.1f} [{p.lo:.1f}, {p.hi:.1f}]" for p in c.points)
        con.print(f"  {c.label}: {pts}", markup=False, soft_wrap=True)
    for n in res.notes:
        con.print(f"note: {n}", markup=False, soft_wrap=True)
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    import json

    from leaderboards.quality import evaluate_quality, quality_table

    from .results import atomic_write_text

    if args.out:
        from .results import check_file_writable

        check_file_writable(args.out)
    rep = evaluate_quality(args.defense, dataset=args.dataset, subset=args.subset, features=args.features,
                           inception_weights=args.inception_weights, seed=args.seed, batch_size=args.batch_size,
                           device=args.device, data_root=args.data_root)
    con = _wide_console()
    con.print(quality_table(rep))
    for n in rep.notes:
        con.print(f"note: {n}", markup=False)
    if args.out:
        atomic_write_text(args.out, json.dumps(rep.to_dict(), indent=1, allow_nan=False) + "\n")
        con.print(f"wrote {args.out}", markup=False)
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
    r.add_argument("--steps", type=_positive_int("steps"), default=None, help="override attack steps")
    r.add_argument("--eot", type=_positive_int("eot"), default=None, help="override EOT draws")
    r.add_argument("--protocol", default=None, help="a published protocol (configs/protocols/NAME.yaml)")
    r.add_argument("--scale", default=None, help="full | cpu | smoke (default: cpu on a CPU, full on a GPU or with --protocol)")
    r.add_argument("--eval-repeats", type=_positive_int("eval repeats"), default=1, help="k forward passes on each final example")
    r.add_argument("--checkpoint", default=None, help="local checkpoint for robustbench:<Name> etc.")
    r.add_argument("--defense-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the defense's factory (repeatable), e.g. --defense-opt steps=10 for "
                        "diffpure's denoising steps; recorded in the run record and its hash")
    r.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    r.add_argument("--batch-size", type=_positive_int("batch size"), default=64)
    r.add_argument("--seed", type=_seed, default=0)
    r.add_argument("--precision", default="fp32", help="fp32 | bf16: attack forward/backward under bf16 autocast if "
                   "its input gradients match fp32 on the first batch (cosine >= 0.99), else fp32; reported "
                   "accuracies always come from fp32 forward passes")
    r.add_argument("--attack-all", action="store_true", help="also attack the clean-misclassified images (by default "
                   "they are skipped, as AutoAttack does: they count as not robust either way; on a deterministic defense "
                   "no number changes, on a stochastic one the draws follow the attacked batch)")
    r.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels_last"),
                   help="weight layout (auto: channels_last on CPU after a logit check on the first batch, "
                        "contiguous on CUDA); recorded in the run record and hash")
    r.add_argument("--compile", action="store_true", help="torch.compile the classifier (no gain over channels-last measured on CPU; "
                   "see benchmarks/README.md)")
    r.add_argument("--no-diagnostics", action="store_true", help="skip the attack-failure checks (docs/FLAGS.md) and the "
                   "attacks they add to the default battery (recorded in the run's record and hash)")
    r.add_argument("--out", default=None, help="run directory (default runs/<defense>-<dataset>-<threat>-<scale>-<hash>)")
    r.add_argument("--quiet", action="store_true", help="no progress bars (or, when stderr is not a terminal, "
                   "no progress lines)")
    r.add_argument("--dry-run", action="store_true", help="measure one forward and one gradient pass on the first "
                   "batch and print the run's projected passes, wall time and peak memory; attacks nothing, "
                   "writes nothing (see benchmark/cost.py)")
    r.add_argument("--assume-robust", type=float, default=None, metavar="FRACTION",
                   help="with --dry-run: the fraction of attacked images that survive each attack component "
                        "(default: from a stored run of the defense under runs/, else a PGD-5 pilot on the first batch)")
    r.add_argument("--probe-batch", type=int, default=None, metavar="N",
                   help="with --dry-run: probe on the first N images (default: the first batch); a few images "
                        "are enough to size a costly defense's full protocol")
    r.add_argument("--dry-run-json", action="store_true", help=argparse.SUPPRESS)
    r.add_argument("--dry-run-clock", default="wall", choices=("wall", "cpu"), help=argparse.SUPPRESS)
    r.add_argument("--distributed", action="store_true", help="require a torchrun launch and shard the batches "
                   "over its ranks (automatic under torchrun): torchrun --nproc-per-node N -m benchmark.cli run ...")
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
    lb.add_argument("--threat", default=None, choices=THREATS, help="one threat (default: all)")
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
    rp.add_argument("--attacks", default=None, help="comma-separated subset of the protocol's attacks "
                    "(claims on the others: not evaluated)")
    rp.add_argument("--n", type=_positive_int("--n"), default=None,
                    help="the first N images of the protocol's subset (instead of the scale's image limit)")
    rp.add_argument("--no-diagnostics", action="store_true", help="skip the post-run attack-failure probes")
    rp.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    rp.add_argument("--results", default="runs", help="run directories go to RESULTS/reproduce/PROTOCOL/")
    rp.add_argument("--data-root", default=None, help="folder for canonical datasets")
    rp.add_argument("--batch-size", type=_positive_int("batch size"), default=64)
    rp.add_argument("--seed", type=_seed, default=0)
    rp.add_argument("--quiet", action="store_true", help="no progress notes")
    rp.set_defaults(func=cmd_reproduce)

    pl = sub.add_parser("plot", help="figures: accuracy vs eps / steps / EOT from stored runs, or an image grid")
    plk = pl.add_subparsers(dest="kind", required=True)
    for kind, what in (("eps", "eps"), ("steps", "attack steps"), ("eot", "EOT draws")):
        c = plk.add_parser(kind, help=f"robust accuracy against {what}, with 95%% intervals")
        c.add_argument("--defense", default=None, help="defense name(s), comma-separated (default: every stored one)")
        c.add_argument("--dataset", default="cifar10")
        c.add_argument("--threat", default="linf", choices=THREATS)
        c.add_argument("--family", default=None, help="attack families to show, e.g. pgd,autoattack (default: all)")
        c.add_argument("--scale", default=None, help="only runs at this scale (with --sweep: the sweep's scale, default cpu)")
        c.add_argument("--results", default="runs", help="folder searched for run directories (default runs/)")
        c.add_argument("--out", default=None, help="PNG file (default RESULTS/plots/acc-vs-KIND-DEFENSE-DATASET.png)")
        c.add_argument("--sweep", default=None, metavar="VALUES",
                       help=f"first run the defense at these {what} values (e.g. "
                            f"{'1/255,2/255,4/255,8/255' if kind == 'eps' else '5,10,20,50' if kind == 'steps' else '1,2,4,8'})"
                            " into RESULTS/sweeps/")
        c.add_argument("--attacks", default=None, help="with --sweep: attack presets (default pgd, or pgd_eot if stochastic)")
        c.add_argument("--subset", default=None, help="with --sweep: images (default: the scale's first n)")
        if kind != "eps":
            c.add_argument("--eps", default=None, help="fixed eps, e.g. 8/255 (the sweep's; and only runs at it)")
        if kind != "steps":
            c.add_argument("--steps", type=_positive_int("steps"), default=None, help="fixed attack steps (the sweep's; and only runs at it)")
        if kind != "eot":
            c.add_argument("--eot", type=_positive_int("eot"), default=None, help="fixed EOT draws (the sweep's; and only runs at it)")
        c.add_argument("--fixed-step", action="store_true",
                       help="with --sweep: keep the preset's PGD step size at every eps (default: scale it with "
                            "eps, keeping the preset's step/eps ratio)")
        c.add_argument("--device", default="cpu")
        c.add_argument("--batch-size", type=_positive_int("batch size"), default=64)
        c.add_argument("--seed", type=_seed, default=0)
        c.add_argument("--data-root", default=None)
        c.add_argument("--quiet", action="store_true")
        c.set_defaults(func=cmd_plot)
    g = plk.add_parser("grid", help="clean / transformed / purified / adversarial / purified-adversarial images")
    g.add_argument("--defense", required=True)
    g.add_argument("--defense-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the defense's factory (repeatable), as for bench run")
    g.add_argument("--dataset", default="cifar10")
    g.add_argument("--subset", default="first:6", help="the images, one row each (at most 16)")
    g.add_argument("--attack", default=None, help="attack preset (default pgd, or pgd_eot if the defense is stochastic)")
    g.add_argument("--threat", default="linf", choices=THREATS)
    g.add_argument("--eps", default=None, help="e.g. 8/255 (default: the preset's)")
    g.add_argument("--steps", type=_positive_int("steps"), default=None)
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--data-root", default=None)
    g.add_argument("--results", default="runs", help="default output folder RESULTS/plots/")
    g.add_argument("--out", default=None, help="PNG file")
    g.set_defaults(func=cmd_plot)

    q = sub.add_parser("quality", help="purification quality: PSNR, SSIM, FD/KID of purified vs clean images")
    q.add_argument("--defense", required=True)
    q.add_argument("--dataset", default="cifar10")
    q.add_argument("--subset", default="first:64")
    q.add_argument("--features", default=None, help="classifier for FD/KID features (default DATASET_standard)")
    q.add_argument("--inception-weights", default=None, help="torch-fidelity's Inception weights file, for FID/KID")
    q.add_argument("--seed", type=_seed, default=0)
    q.add_argument("--batch-size", type=_positive_int("batch size"), default=64)
    q.add_argument("--device", default="cpu")
    q.add_argument("--data-root", default=None)
    q.add_argument("--out", default=None, help="also write the report as JSON to FILE")
    q.set_defaults(func=cmd_quality)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._explicit = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    empty = _empty_flag(args, argv)
    if empty is not None:
        sys.stderr.write(f"error: {empty} was given an empty value; leave it out for the default\n")
        return 2
    try:
        return int(args.func(args) or 0)
    except BenchError as e:
        sys.stderr.write(f"error: {e}\n")  # one write: torchrun ranks share the stream, lines must not interleave
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
