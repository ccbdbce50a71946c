"""Evaluation data: datasets, their sources, the shipped offline sets, and subset specs.

``load_eval_set("cifar10", "first:100")`` returns an :class:`EvalSet` (float32 [0,1] NCHW
images, labels, ids, provenance). See :mod:`benchmark.data.datasets` for the sources and
:mod:`benchmark.data.subsets` (and ``SUBSETS.md``) for the subset specs.
"""
from .datasets import (
    SPECS,
    DatasetSpec,
    EvalSet,
    data_cache_dir,
    dataset_rows,
    get_spec,
    load_eval_set,
    open_source,
)
from .subsets import Subset, parse_subset, subset_rows, subsets_markdown

__all__ = [
    "SPECS",
    "DatasetSpec",
    "EvalSet",
    "Subset",
    "data_cache_dir",
    "dataset_rows",
    "get_spec",
    "load_eval_set",
    "open_source",
    "parse_subset",
    "subset_rows",
    "subsets_markdown",
]
