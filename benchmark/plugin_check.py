"""A user's plugin model, checked at every call: one error line naming it, never a traceback.

A plugin (``--defense file.py:fn`` or ``pkg.mod:fn``) is code we did not write: its factory may
raise, and its module may raise mid-run or return a tuple, integer "logits", the wrong batch
size or the wrong number of classes (a CIFAR-100 head scored silently on CIFAR-10).
:func:`guard_plugin` wraps the plugin's classifier in :class:`CheckedModule`, which turns each
of these into a BenchError at the call that shows it. Batches already stored stay on disk: the
run stops before writing the batch in flight.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import BenchError


def _what(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a {out.dtype} tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} item(s)"
    return f"a {type(out).__name__}"


def check_output(label: str, out: Any, batch: int, n_classes: int) -> torch.Tensor:
    """``out`` if it is float logits of shape (batch, n_classes), else a BenchError naming ``label``."""
    want = f"expected float logits of shape ({batch}, {n_classes})"
    if not isinstance(out, torch.Tensor):
        raise BenchError(f"{label} returned {_what(out)} on a batch of {batch} images; {want}")
    if not out.is_floating_point():
        raise BenchError(f"{label} returned {_what(out)} (integer or boolean, not logits); {want}")
    if out.dim() != 2 or out.shape[0] != batch:
        raise BenchError(f"{label} returned {_what(out)} for a batch of {batch} images; {want}")
    if out.shape[1] != n_classes:
        raise BenchError(f"{label} returned {out.shape[1]} class scores per image, but the dataset has "
                         f"{n_classes} classes; {want}")
    return out


class CheckedModule(nn.Module):
    """``module``, with its exceptions and malformed outputs turned into one-line BenchErrors."""

    def __init__(self, module: nn.Module, label: str, n_classes: int) -> None:
        super().__init__()
        self.module = module
        self.label = label
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.module(x)
        except BenchError:
            raise
        except Exception as e:  # the user's code may fail in any way: say whose code and how
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BenchError(f"{self.label} raised {type(e).__name__}{': ' + msg if msg else ''} "
                             f"(on a batch of {x.shape[0]} images)") from None
        return check_output(self.label, out, x.shape[0], self.n_classes)


def guard_module(module: nn.Module, target: str, dataset: str) -> CheckedModule:
    """``module`` (from plugin ``target``) checked against ``dataset``'s class count at every call."""
    from .data import get_spec

    if isinstance(module, CheckedModule):
        return module
    return CheckedModule(module, f"plugin {target!r}", len(get_spec(dataset).classes))


def guard_plugin(defense: Any, target: str, dataset: str) -> Any:
    """``defense`` (a Defense built by plugin ``target``) with its classifier guarded."""
    defense.classifier = guard_module(defense.classifier, target, dataset)
    return defense
