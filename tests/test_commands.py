"""Every `bench ...` command an error hint prints parses with the CLI's own parser (hints cannot drift)."""
from __future__ import annotations

import re
import shlex

import pytest

from benchmark.cli import build_parser
from benchmark.commands import train_command


def _commands(text: str) -> list[list[str]]:
    return [shlex.split(c)[1:] for c in re.findall(r"`(bench [^`]+)`", text)]


def test_train_command_spelling():
    assert train_command("ddpm", "configs/train/ddpm_cifar10.yaml", device="cuda") == \
        "bench train ddpm --config configs/train/ddpm_cifar10.yaml --device cuda"
    with pytest.raises(ValueError):
        train_command("ddpm", "x.yaml", epochs="3")  # bench train has no --epochs


def test_every_missing_weights_hint_parses_with_the_cli():
    from defenses.atop import TRAIN_CONFIGS, missing_weights_error
    from defenses.classifiers import SHIPPED, _missing_weights
    from defenses.diffpure import TRAIN_COMMAND

    hints = [f"`{c}`" for c in TRAIN_COMMAND.values()]
    hints += [str(missing_weights_error(w)) for w in TRAIN_CONFIGS]
    hints += [str(_missing_weights(n)) for n in SHIPPED]
    cmds = [c for h in hints for c in _commands(h)]
    assert len(cmds) == len(TRAIN_COMMAND) + len(TRAIN_CONFIGS) + len(SHIPPED)
    parser = build_parser()
    for argv in cmds:
        args = parser.parse_args(argv)  # a drifted hint (e.g. a missing --config) exits 2 here
        assert args.command == "train" and args.config.startswith("configs/train/"), argv
