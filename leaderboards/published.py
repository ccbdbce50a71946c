"""Published results as data: ``leaderboards/published/*.yaml``, checked against a schema.

Each file has ``defaults`` (merged into every row) and ``rows``; a row is one defense under one
attack, as printed in one table of one paper. Rows of the same table with the same ``group``
(default: the row's own label) are one defense under several attacks, shown as one leaderboard
entry; ``ours``/``protocol`` (one name or a list)/``protocol_attack`` map a row onto our defense and protocol attack
(for ``bench reproduce``). Numbers are percentages as printed. A field that
the source does not state is written explicitly as ``null`` (never left out), so a missing key
is always a transcription error and is rejected, as is a number outside 0-100 or an unknown
threat, dataset or attack family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from attacks.family import LABELS
from benchmark.errors import BenchError
from benchmark.threats import THREATS, parse_eps  # noqa: F401  (re-exported: their home is benchmark.threats)

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"

DATASETS = ("cifar10", "cifar100", "imagenette", "imagenet")
# Attack families as the leaderboard groups them (leaderboards.board.attack_family): the columns of
# the registered attack families (attacks.family), read at each use.
FAMILIES = LABELS

# Every row must carry these keys (after merging the file's defaults); `None` allowed where marked.
REQUIRED: dict[str, bool] = {  # key -> may be null
    "paper": False, "table": False, "row": False,
    "dataset": False, "threat": False, "eps": False,
    "attack": False, "family": False, "steps": True, "eot": True, "n": True,
    "classifier": False, "defense": False, "clean": True, "robust": False,
}
OPTIONAL = ("group", "extra_data", "note", "ours", "protocol", "protocol_attack", "grad_mode")
# what the paper's attacker differentiates (leaderboards.board.THREAT_MODELS): exact gradients through
# the whole defense, or BPDA through the purifier; absent = exact (the default white box)
GRAD_MODES = ("exact", "bpda")
COLUMNS = [*REQUIRED, *OPTIONAL, "eps_text", "citation", "file"]


def _percent(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BenchError(f"{where}: {key} must be a number (percent), got {value!r}")
    if not 0 <= float(value) <= 100:
        raise BenchError(f"{where}: {key} = {value} is outside 0-100 (percent)")
    return float(value)


def _count(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BenchError(f"{where}: {key} must be a positive integer or null, got {value!r}")
    return value


def validate_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A checked, normalised copy of one merged row; BenchError names the file, row and field."""
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise BenchError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join([*REQUIRED, *OPTIONAL])}")
    for key, nullable in REQUIRED.items():
        if key not in row:
            raise BenchError(f"{where}: missing field {key!r} (write {key}: null if the source does not state it)"
                             if nullable else f"{where}: missing field {key!r}")
        if row[key] is None and not nullable:
            raise BenchError(f"{where}: field {key!r} may not be null")
    out = dict(row)
    for key in ("paper", "table", "row", "attack", "classifier", "defense"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise BenchError(f"{where}: {key} must be a non-empty string, got {row[key]!r}")
    if row["threat"] not in THREATS:
        raise BenchError(f"{where}: unknown threat {row['threat']!r}; choose from {', '.join(THREATS)}")
    if row["dataset"] not in DATASETS:
        raise BenchError(f"{where}: unknown dataset {row['dataset']!r}; choose from {', '.join(DATASETS)}")
    if row["family"] not in FAMILIES:
        raise BenchError(f"{where}: unknown attack family {row['family']!r}; choose from {', '.join(FAMILIES)}")
    out["eps_text"] = str(row["eps"])
    out["eps"] = parse_eps(row["eps"], where)
    out["robust"] = _percent(row["robust"], "robust", where)
    out["clean"] = None if row["clean"] is None else _percent(row["clean"], "clean", where)
    for key in ("steps", "eot", "n"):
        out[key] = None if row[key] is None else _count(row[key], key, where)
    if row.get("grad_mode", "exact") not in (*GRAD_MODES, None):
        raise BenchError(f"{where}: grad_mode must be one of {', '.join(GRAD_MODES)} or null (not stated), "
                         f"got {row['grad_mode']!r}")
    out["grad_mode"] = row.get("grad_mode", "exact")
    if row.get("extra_data") is not None and not isinstance(row["extra_data"], bool):
        raise BenchError(f"{where}: extra_data must be true, false or null, got {row['extra_data']!r}")
    for key in ("group", "note", "ours", "protocol_attack"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise BenchError(f"{where}: {key} must be a string, got {row[key]!r}")
    # one protocol or a list: the same published number can be the baseline of several of our
    # protocols (ADDT's Q1 rows serve addt_pgd20_eot10 and addt_q1_budgets); stored as a tuple
    protos = row.get("protocol")
    protos = [protos] if isinstance(protos, str) else protos
    if protos is not None and (not isinstance(protos, list) or not protos
                               or not all(isinstance(x, str) and x for x in protos)):
        raise BenchError(f"{where}: protocol must be a protocol name or a list of them, got {row['protocol']!r}")
    out["protocol"] = tuple(protos) if protos is not None else None
    out["group"] = row.get("group") or row["row"]  # rows of one group form one leaderboard entry
    out["citation"] = f"{row['paper']}, {row['table']}, row {row['row']}"
    return out


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """The checked rows of one published YAML file."""
    from benchmark.config import read_yaml

    p = Path(path)
    data = read_yaml(p, "published table")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise BenchError(f"{p}: expected a mapping with a 'rows' list (and optional 'defaults')")
    extra = sorted(set(data) - {"defaults", "rows"})
    if extra:
        raise BenchError(f"{p}: unknown top-level key(s) {', '.join(extra)}; allowed: defaults, rows")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise BenchError(f"{p}: defaults must be a mapping")
    out = []
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            raise BenchError(f"{p.name} row {i + 1}: expected a mapping, got {type(row).__name__}")
        where = f"{p.name} row {i + 1}" + (f" ({row['table']}, {row['row']})" if "table" in row and "row" in row else "")
        r = validate_row({**defaults, **row}, where)
        r["file"] = p.name
        out.append(r)
    return out


def load_published(dataset: str | None = None, *, paths: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """All published rows (of ``dataset``, if given) as a DataFrame with :data:`COLUMNS`.

    ``paths`` replaces the shipped files (tests, or a user's own transcriptions).
    """
    files = sorted(PUBLISHED_DIR.glob("*.yaml")) if paths is None else [Path(p) for p in paths]
    if dataset is not None and dataset not in DATASETS:
        raise BenchError(f"unknown dataset {dataset!r}; published tables cover {', '.join(DATASETS)}")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows += read_file(f)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    return df.reset_index(drop=True)
