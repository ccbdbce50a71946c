"""Evaluation subset specs: which images of a split a run evaluates.

Robust accuracy under strong adaptive attacks is expensive, so published purification
results are measured on subsets of the test set, and each paper picks its own. A spec
string names one of those choices exactly, so a config or ``--subset`` flag reproduces
it:

- ``all``: the whole split (the default).
- ``first:N``: the first N images in the source's order.
- ``random:N:SEED``: ``np.random.RandomState(SEED).choice(n, N, replace=False)``.
- ``diffpure``: DiffPure's 8 runs of 64 images (see :func:`diffpure_indices`).
- ``ids:FILE``: the images whose ids are listed in FILE, one per line, in file order.

Indices refer to the source's own order. The published random subsets were drawn over
the canonical test-set order, so they select the published images only with the
canonical sources (``torchvision`` for CIFAR, ``canonical`` for ImageNette).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmark.errors import BenchError

# DiffPure (Nie et al., ICML 2022) evaluates CIFAR-10 in runs of --num_sub 64 images,
# one run per --data_seed; 8 runs give the 512 images of the paper.
DIFFPURE_SEEDS = tuple(range(8))
DIFFPURE_BATCH = 64

SPEC_HELP = "all, first:N, random:N:SEED, diffpure[:RUNS:BATCH], ids:FILE"


def diffpure_indices(n: int, seeds: Sequence[int] = DIFFPURE_SEEDS, batch: int = DIFFPURE_BATCH) -> np.ndarray:
    """The 512 test indices DiffPure evaluates on CIFAR-10 (for ``n = 10000``).

    What the code does (NVlabs/DiffPure): ``utils.load_data`` calls
    ``data.cifar10_dataset_sub(num_sub=args.num_sub, data_seed=args.data_seed)``, which is
    ``np.random.RandomState(data_seed).choice(len(val_data), num_sub, replace=False)``
    over torchvision's CIFAR-10 test set (``data/datasets.py``); the CIFAR-10 run scripts
    (``run_scripts/cifar10/run_cifar_*.sh``) pass ``--num_sub 64 --adv_batch_size 64`` and
    take ``data_seed`` as an argument ("used for sampling a fixed set of images"). The
    paper's 512 images are therefore 8 such runs; the seed values 0..7 are an inference
    (512 / 64 = 8 runs, numbered from 0 like the default ``--data_seed 0``): the repository
    does not list them. Runs are drawn independently, so an image can appear in two runs
    (on 10,000 images: 504 distinct, 8 repeats); we keep the repeats, as averaging the runs does.
    """
    if n < batch:
        raise BenchError(f"subset diffpure draws {batch} images per seed but the source has only {n}")
    return np.concatenate([np.random.RandomState(s).choice(n, batch, replace=False) for s in seeds]).astype(np.int64)


@dataclass(frozen=True)
class Subset:
    """A parsed subset spec; ``indices(n)`` selects from a source of ``n`` images."""

    kind: str  # "all" | "first" | "random" | "diffpure" | "ids"
    count: int | None = None
    seed: int | None = None
    path: str | None = None
    ids: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string (recorded in results)."""
        if self.kind == "first":
            return f"first:{self.count}"
        if self.kind == "random":
            return f"random:{self.count}:{self.seed}"
        if self.kind == "diffpure" and self.count is not None:
            return f"diffpure:{self.seed}:{self.count}"
        if self.kind == "ids":
            return f"ids:{self.path}"
        return self.kind

    def __str__(self) -> str:
        return self.spec

    def indices(self, n: int, ids: Sequence[str] | None = None) -> np.ndarray:
        """Positions (int64) into a source of ``n`` images; ``ids`` (the source's ids, in
        order) is needed for ``ids:FILE``. Raises BenchError when the source is too small
        or an id is missing."""
        if self.kind == "all":
            return np.arange(n, dtype=np.int64)
        if self.kind in ("first", "random"):
            assert self.count is not None
            if self.count > n:
                raise BenchError(f"subset {self.spec} asks for {self.count} images but the source has only {n}")
            if self.kind == "first":
                return np.arange(self.count, dtype=np.int64)
            return np.random.RandomState(self.seed).choice(n, self.count, replace=False).astype(np.int64)
        if self.kind == "diffpure":
            if self.count is not None:  # diffpure:RUNS:BATCH (ImageNet: 32 runs of --num_sub 16)
                return diffpure_indices(n, tuple(range(self.seed or 0)), self.count)
            return diffpure_indices(n)
        if self.kind == "ids":
            if ids is None:
                raise ValueError("subset ids:FILE needs the source's ids")
            if len(ids) != n:
                raise ValueError(f"got {len(ids)} ids for a source of {n} images")
            pos = {s: i for i, s in enumerate(ids)}
            missing = [s for s in self.ids if s not in pos]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise BenchError(
                    f"subset {self.spec}: {len(missing)} of {len(self.ids)} ids not found in the source ({shown}); "
                    f"ids look like {ids[0]!r}"
                )
            return np.array([pos[s] for s in self.ids], dtype=np.int64)
        raise ValueError(f"unknown subset kind {self.kind!r}")


def _int(text: str, what: str, spec: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BenchError(f"malformed subset {spec!r}: {what} must be an integer, got {text!r}; use {SPEC_HELP}") from None
    if value < minimum:
        raise BenchError(f"malformed subset {spec!r}: {what} must be >= {minimum}, got {value}")
    return value


def read_ids(path: str | Path) -> tuple[str, ...]:
    """Ids from a text file: one per line; blank lines and ``#`` comments are skipped."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"subset ids file not found: {p}")
    from ..safe_io import read_text

    lines = [ln.split("#", 1)[0].strip() for ln in read_text(p, "subset ids file").splitlines()]
    ids = tuple(ln for ln in lines if ln)
    if not ids:
        raise BenchError(f"subset ids file {p} lists no ids (one id per line)")
    return ids


def parse_subset(spec: str | Subset | None) -> Subset:
    """Parse ``all | first:N | random:N:SEED | diffpure | ids:FILE`` (None means ``all``).

    ``ids:FILE`` reads the file now, so a missing file fails before any work starts.
    """
    if isinstance(spec, Subset):
        return spec
    if spec is None:
        return Subset("all")
    if not isinstance(spec, str):
        raise BenchError(f"malformed subset {spec!r}: expected a string like {SPEC_HELP}")
    text = spec.strip()
    head, _, rest = text.partition(":")
    head = head.strip().lower()
    if head == "diffpure" and rest:
        parts = rest.split(":")
        if len(parts) != 2 or not all(parts):
            raise BenchError(f"malformed subset {spec!r}: expected diffpure or diffpure:RUNS:BATCH (e.g. diffpure:32:16)")
        return Subset("diffpure", count=_int(parts[1], "BATCH", spec, 1), seed=_int(parts[0], "RUNS", spec, 1))
    if head in ("all", "diffpure"):
        if rest:
            raise BenchError(f"malformed subset {spec!r}: {head} takes no arguments")
        return Subset(head)
    if head == "first":
        parts = rest.split(":")
        if len(parts) != 1 or not parts[0]:
            raise BenchError(f"malformed subset {spec!r}: expected first:N")
        return Subset("first", count=_int(parts[0], "N", spec, 1))
    if head == "random":
        parts = rest.split(":")
        if len(parts) != 2 or not all(parts):
            raise BenchError(f"malformed subset {spec!r}: expected random:N:SEED (e.g. random:512:0)")
        from ..seeds import SEED_LIMIT

        seed = _int(parts[1], "SEED", spec, 0)
        if seed >= SEED_LIMIT:
            raise BenchError(f"malformed subset {spec!r}: SEED must be < 2**32")
        return Subset("random", count=_int(parts[0], "N", spec, 1), seed=seed)
    if head == "ids":
        if not rest:
            raise BenchError(f"malformed subset {spec!r}: expected ids:FILE")
        return Subset("ids", path=rest, ids=read_ids(rest))
    raise BenchError(f"malformed subset {spec!r}: use one of {SPEC_HELP}")


def subset_rows() -> list[dict[str, str]]:
    """One row per spec form, with the published protocols that use it (``bench list subsets``)."""
    return [
        {
            "spec": "all",
            "meaning": "the whole split of the source (default)",
            "used_by": "RobustBench / AutoAttack leaderboards (CIFAR-10/100: all 10,000 test images)",
        },
        {
            "spec": "first:N",
            "meaning": "the first N images in the source's order; on cifar10/embedded the order is "
            "interleaved by class, so first:N is class-balanced",
            "used_by": "ADDT (first 1024 test images, per the authors' OpenReview rebuttal); "
            "robustbench.load_cifar10(n_examples=N) and AutoAttack's quick runs",
        },
        {
            "spec": "random:N:SEED",
            "meaning": "np.random.RandomState(SEED).choice(n, N, replace=False), in that order",
            "used_by": "Lee & Kim 2023 (ICCV, robust evaluation of diffusion purification): random:512:0; "
            "AToP says it follows DiffPure's 512 random images, seed not stated",
        },
        {
            "spec": "diffpure",
            "meaning": f"DiffPure's data_seed 0..7 x {DIFFPURE_BATCH} images: concatenation of "
            f"RandomState(s).choice(n, {DIFFPURE_BATCH}, replace=False), s = 0..7 (512, repeats kept)",
            "used_by": "DiffPure (Nie et al. 2022), CIFAR-10 AutoAttack tables",
        },
        {
            "spec": "diffpure:RUNS:BATCH",
            "meaning": "the same with data_seed 0..RUNS-1 x BATCH images (RandomState(s).choice(n, BATCH, replace=False))",
            "used_by": "DiffPure ImageNet: diffpure:32:16 over the 50,000 val images in ImageFolder order (its run "
            "scripts pass --num_sub 16 per data_seed; 32 runs for 512 images and seeds 0..31 are inferred, as for CIFAR-10)",
        },
        {
            "spec": "ids:FILE",
            "meaning": "the listed ids (one per line, '#' comments allowed), in file order",
            "used_by": "any fixed list, e.g. a subset exported from another run",
        },
    ]


def subsets_markdown() -> str:
    """The README paragraph on subsets (kept in ``benchmark/data/SUBSETS.md``)."""
    rows = subset_rows()
    lines = [
        "## Evaluation subsets",
        "",
        "Attacks on stochastic purification defenses are expensive, so published results use",
        "subsets of the test set, and each paper picks its own. `--subset` (or `subset:` in a",
        "config) names one exactly; the run records the spec and the image ids it evaluated.",
        "",
        "| spec | meaning | used by |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{r['spec']}` | {r['meaning']} | {r['used_by']} |" for r in rows]
    lines += [
        "",
        "Indices count in the source's own order. `random:N:SEED` and `diffpure` were drawn by",
        "their authors over torchvision's CIFAR-10 test order, so they pick the published images",
        "only with `--source torchvision` (downloaded); on the shipped offline sets they are",
        "just seeded random subsets of those sets.",
        "",
        "The package ships fixed evaluation sets, so `bench run` works offline:",
        "",
        "- `cifar10` source `embedded` (default): 1,000 CIFAR-10 test images, the first 100 of",
        "  each class of the JPEG-re-encoded test split, stored as their original JPEG bytes and",
        "  ordered interleaved by class (rank 0 of classes 0..9, then rank 1, ...), so",
        "  `first:N` is class-balanced for N a multiple of 10. Ids are `<class>/<rank>.jpg`.",
        "  The JPEG pixels differ from the original CIFAR-10 PNGs (PSNR 27-33 dB), so accuracy",
        "  on them is not directly comparable to published numbers.",
        "- `cifar10` and `cifar100` source `exact20`: the first 20 canonical test images with",
        "  their exact original pixels (lossless PNGs as shipped by foolbox). Ids are",
        "  `test/<index>`, as for the downloaded `torchvision` source.",
        "- `imagenette` source `embedded` (default): 200 imagenette2 validation images, the",
        "  first 20 by file name of each class, 224x224 JPEG re-encodes, interleaved by class",
        "  like CIFAR-10. Ids are `<wnid>/<file>`, as for the downloaded `canonical` source",
        "  (full-size images, resized to 256 on the short side and centre-cropped to 224).",
        "",
        "Each shipped set is an uncompressed zip of the original files plus an index (`.json`)",
        "with ids, labels, class names, each file's sha256 and the source archive's sha256;",
        "`python scripts/build_subsets.py --check` verifies them.",
        "",
    ]
    return "\n".join(lines)
