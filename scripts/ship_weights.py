#!/usr/bin/env python
"""Ship a finished training run as a zoo model.

    python scripts/ship_weights.py RUN_DIR NAME [--dtype auto|float16|float32] [--data-root DIR]

copies RUN_DIR/weights.safetensors (as float16 when that changes no prediction, see below)
and RUN_DIR/recipe.json into defenses/weights/ and adds/replaces the manifest entry NAME
(file, sha256, arch, dataset, recipe, metrics), after which ``--defense standard`` etc. load it.

``--dtype auto`` (default) evaluates the fp32 and the fp16-rounded weights on the run's own
embedded-equivalent subset (decoded from the config's data folders under ``--data-root``)
and ships fp16 unless that loses accuracy (more than one image of the subset); the check is
recorded in the manifest entry's metrics (``fp16_check``). An explicit dtype skips it.
fp16 applies to weight kernels only; BatchNorm statistics and biases stay fp32.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.errors import BenchError  # noqa: E402


def fp16_check(run_dir: Path, recipe: dict, data_root: str | None) -> dict:
    """Compare fp32 and fp16-rounded weights on the run's eval subset (CPU, clean inputs)."""
    from benchmark.config import from_dict
    from benchmark.train.classifier import DataCfg, _first_per_class, _load_folder, _resolve_dir
    from defenses.classifiers import build_arch, cast_weights
    from defenses.weights import load_state_dict

    cfg = recipe["config"]
    data = from_dict(DataCfg, cfg["data"], where="recipe.config.data")
    classes = recipe["data"].get("classes")
    if data.subset_dir is not None:
        subset = _load_folder(_resolve_dir(data.subset_dir, data_root), data.subset_split or data.test_split,
                              classes=classes, size=data.subset_size, per_class=data.subset_per_class)
    else:
        test = _load_folder(_resolve_dir(data.dir, data_root), data.test_split, classes=classes, size=data.size,
                            per_class=data.subset_per_class)
        subset = _first_per_class(test, data.subset_per_class)
    state = load_state_dict(run_dir / "weights.safetensors")
    model_cfg = cfg["model"]
    preds, logits = [], []
    for dt in (torch.float32, torch.float16):
        model = build_arch(model_cfg["arch"], dataset=cfg["dataset"], num_classes=model_cfg.get("num_classes"),
                           **model_cfg.get("kwargs", {}))
        name = "float16" if dt == torch.float16 else "float32"
        model.load_state_dict({k: cast_weights(v, name).float() if v.is_floating_point() else v
                               for k, v in state.items()})
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(subset.labels), 100):
                out.append(model(subset.images[i:i + 100].float() / 255))
        lg = torch.cat(out)
        logits.append(lg)
        preds.append(lg.argmax(1))
    n = len(subset.labels)
    correct = [int((p == subset.labels).sum()) for p in preds]
    return {"n": n, "acc_fp32": correct[0] / n, "acc_fp16": correct[1] / n,
            "agreement": float((preds[0] == preds[1]).float().mean()),
            "max_abs_logit_diff": float((logits[0] - logits[1]).abs().max()),
            # no accuracy loss: at most one image of the subset (ties flip either way)
            "ok": correct[1] >= correct[0] - 1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("name")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"))
    p.add_argument("--data-root", default=None, help="folder holding the run's data folders (for --dtype auto)")
    p.add_argument("--weights-dir", default=None, help="shipped-weights folder (default: defenses/weights)")
    a = p.parse_args(argv)
    from defenses.classifiers import register_shipped

    run = Path(a.run_dir)
    try:
        if not (run / "recipe.json").is_file() or not (run / "weights.safetensors").is_file():
            raise BenchError(f"{run} is not a finished run (needs weights.safetensors and recipe.json)")
        recipe = json.loads((run / "recipe.json").read_text())
        metrics = dict(recipe.get("metrics", {}))
        dtype = a.dtype
        if dtype == "auto":
            check = fp16_check(run, recipe, a.data_root)
            metrics["fp16_check"] = check
            dtype = "float16" if check["ok"] else "float32"
            print(f"fp16 check: {json.dumps(check)} -> {dtype}")
        kw = {"weights_dir": Path(a.weights_dir)} if a.weights_dir else {}
        entry = register_shipped(a.name, run / "weights.safetensors", recipe, dtype=dtype, metrics=metrics, **kw)
        if entry["bytes"] > 12_000_000:
            print(f"warning: {entry['file']} is {entry['bytes'] / 1e6:.1f} MB, over the 12 MB per-model limit",
                  file=sys.stderr)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
