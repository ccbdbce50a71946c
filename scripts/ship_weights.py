#!/usr/bin/env python
"""Ship a finished training run as a zoo model.

    python scripts/ship_weights.py RUN_DIR NAME [--dtype auto|float16|float32] [--data-root DIR]

copies RUN_DIR/weights.safetensors (as float16 when that changes no prediction, see below)
and RUN_DIR/recipe.json into defenses/weights/ and adds/replaces the manifest entry NAME
(file, sha256, arch, dataset, recipe, metrics), after which ``--defense standard`` etc. load it.
DDPM and ADDT runs (``bench train ddpm|addt``) ship as fp32 EMA weights with their UNet config
and schedule in the entry (``--defense diffpure`` / ``addt`` load ``ddpm_cifar10`` / ``addt_cifar10``).

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


def fp16_check(run_dir: Path, recipe: dict, data_root: str | None, extra_kwargs: dict | None = None,
               full: bool = False) -> dict:
    """Compare fp32 and fp16-rounded weights on the run's eval subset (CPU, clean inputs), with
    ``extra_kwargs`` added to the architecture's; ``full``: the fp16 model on the whole test split too."""
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
    if full:
        test_full = _load_folder(_resolve_dir(data.dir, data_root), data.test_split, classes=classes, size=data.size)
    state = load_state_dict(run_dir / "weights.safetensors")
    model_cfg = cfg["model"]
    preds, logits = [], []
    for dt in (torch.float32, torch.float16):
        model = build_arch(model_cfg["arch"], dataset=cfg["dataset"], num_classes=model_cfg.get("num_classes"),
                           **{**model_cfg.get("kwargs", {}), **(extra_kwargs or {})})
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
    extra = {}
    if full:  # the shipped (last built: fp16-rounded) model on the whole test split
        with torch.no_grad():
            pf = torch.cat([model(test_full.images[i:i + 200].float() / 255).argmax(1)
                            for i in range(0, len(test_full.labels), 200)])
        extra = {"n_full": len(test_full.labels), "acc_fp16_full": float((pf == test_full.labels).float().mean())}
    n = len(subset.labels)
    correct = [int((p == subset.labels).sum()) for p in preds]
    return {**extra, "n": n, "acc_fp32": correct[0] / n, "acc_fp16": correct[1] / n,
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
    p.add_argument("--tta-flip", action="store_true",
                   help="ship with test-time flip averaging (airnet tta_flip: eval-mode logits = mean over the "
                        "image and its mirror); the accuracies are re-measured that way (subset and full test)")
    a = p.parse_args(argv)
    from defenses.classifiers import register_shipped

    run = Path(a.run_dir)
    try:
        if not (run / "recipe.json").is_file() or not (run / "weights.safetensors").is_file():
            raise BenchError(f"{run} is not a finished run (needs weights.safetensors and recipe.json)")
        recipe = json.loads((run / "recipe.json").read_text())
        metrics = dict(recipe.get("metrics", {}))
        if recipe.get("kind") in ("ddpm", "addt"):  # a diffusion UNet: fp32 EMA weights, UNet config + schedule
            kw = {"weights_dir": Path(a.weights_dir)} if a.weights_dir else {}
            dtype = "float32" if a.dtype == "auto" else a.dtype
            metrics = {**metrics, **recipe.get("final_metrics", {})}
            entry = register_shipped(a.name, run / "weights.safetensors", recipe, dtype=dtype, metrics=metrics,
                                     arch=f"{recipe['kind']}_unet",
                                     extra_entry={"unet": recipe["unet"], "schedule": recipe["schedule"],
                                                  "kind": recipe["kind"]}, **kw)
            print(json.dumps(entry, indent=2))
            return 0
        if recipe.get("kind") == "atop":  # an AToP purifier: weights as trained (save_dtype), arch from its config
            from benchmark.train.atop import purifier_arch_kwargs

            cfg = recipe["config"]
            kw = {"weights_dir": Path(a.weights_dir)} if a.weights_dir else {}
            dtype = cfg.get("save_dtype", "float16") if a.dtype == "auto" else a.dtype
            entry = register_shipped(a.name, run / "weights.safetensors", recipe, dtype=dtype, metrics=metrics,
                                     extra_arch_kwargs=purifier_arch_kwargs(cfg), arch=f"atop_{cfg['purifier']}", **kw)
            print(json.dumps(entry, indent=2))
            return 0
        dtype = a.dtype
        extra = {"tta_flip": True} if a.tta_flip else {}
        if dtype == "auto" or extra:
            check = fp16_check(run, recipe, a.data_root, extra, full=bool(extra))
            metrics["fp16_check"] = check
            if dtype == "auto":
                dtype = "float16" if check["ok"] else "float32"
            print(f"fp16 check: {json.dumps(check)} -> {dtype}")
        if extra:  # the run's own metrics were measured without TTA: keep them, add the shipped ones
            metrics["tta_flip"] = {"clean_acc_subset": check["acc_fp16" if dtype == "float16" else "acc_fp32"],
                                   "n_subset": check["n"], "clean_acc_full": check["acc_fp16_full"],
                                   "n_full": check["n_full"],
                                   "note": "test-time flip averaging added at shipping; weights as trained"}
        kw = {"weights_dir": Path(a.weights_dir)} if a.weights_dir else {}
        entry = register_shipped(a.name, run / "weights.safetensors", recipe, dtype=dtype, metrics=metrics,
                                 extra_arch_kwargs=extra, **kw)
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
