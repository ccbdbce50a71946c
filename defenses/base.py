"""The defense protocol: transform -> purifier -> classifier, with explicit noise.

Every random tensor a defense uses in one forward pass lives in a :class:`Noise` object,
drawn by ``defense.sample_noise(x, generator)``. ``defense(x, noise)`` is then a pure
function of ``x`` and ``noise``. That single rule is what makes the attacks honest and
simple: EOT averages gradients over several noise draws, DW-box (``fixed``) replays the
exact noise of the final evaluation, BPDA swaps the purifier's backward for the identity,
and a saved run replays bit for bit.

Images are float tensors in [0, 1] of shape (N, C, H, W); any normalisation lives inside
the classifier, as in RobustBench.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from benchmark.errors import BenchError

Index = slice | Sequence[int] | Tensor


@dataclass(frozen=True)
class Noise:
    """All random tensors of one forward pass, by name, each with the batch dimension first.

    ``n`` is the batch size; it is kept even when there are no parts, so that the noise of
    a deterministic defense slices and concatenates like any other.
    """

    n: int
    parts: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, t in self.parts.items():
            if t.shape[:1] != (self.n,):
                raise ValueError(f"noise part {name!r} has batch {tuple(t.shape[:1])}, expected {self.n}")

    # --- inspection -------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.parts)

    @property
    def is_empty(self) -> bool:
        return not self.parts

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.parts[name]
        except KeyError:
            raise KeyError(f"noise has no part {name!r}; parts: {list(self.parts)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.parts

    def __len__(self) -> int:
        return self.n

    def equal(self, other: "Noise") -> bool:
        return (
            self.n == other.n
            and self.names == other.names
            and all(torch.equal(self.parts[k], other.parts[k]) for k in self.parts)
        )

    # --- per-sample algebra ----------------------------------------------------------
    def select(self, index: Index) -> "Noise":
        """The noise of a subset of samples (a slice, a list of indices or a bool/long tensor)."""
        if isinstance(index, slice):
            n = len(range(*index.indices(self.n)))
            return Noise(n, {k: v[index] for k, v in self.parts.items()})
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.long).cpu()
        return Noise(int(idx.numel()), {k: v[idx.to(v.device)] for k, v in self.parts.items()})

    @staticmethod
    def cat(noises: Sequence["Noise"]) -> "Noise":
        """Concatenate per-sample noise along the batch dimension."""
        if not noises:
            raise ValueError("cannot concatenate zero noise objects")
        names = noises[0].names
        for z in noises[1:]:
            if z.names != names:
                raise ValueError(f"cannot concatenate noise with parts {names} and {z.names}")
        return Noise(sum(z.n for z in noises), {k: torch.cat([z.parts[k] for z in noises]) for k in names})

    def repeat(self, k: int) -> "Noise":
        """Tile the batch k times (sample order: all of draw 0, then all of draw 1, ...)."""
        return Noise(self.n * k, {name: t.repeat(k, *([1] * (t.dim() - 1))) for name, t in self.parts.items()})

    def fix(self, fixed: "Noise", names: Iterable[str] | None = None) -> "Noise":
        """This noise with the parts ``names`` (all if None) taken from ``fixed``.

        This is how a DW-box attacker knows part of the randomness (e.g. only the diffusion
        ``forward`` noise) while the rest is redrawn.
        """
        names = list(fixed.names if names is None else names)
        if fixed.n != self.n:
            raise ValueError(f"fixed noise has batch {fixed.n}, expected {self.n}")
        unknown = [k for k in names if k not in self.parts]
        if unknown:
            raise BenchError(f"noise has no part(s) {unknown}; this defense's parts are {list(self.names) or 'none'}")
        return Noise(self.n, {k: (fixed.parts[k] if k in names else v) for k, v in self.parts.items()})

    def to(self, *args: Any, **kwargs: Any) -> "Noise":
        return Noise(self.n, {k: v.to(*args, **kwargs) for k, v in self.parts.items()})

    # --- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Save with safetensors (no pickle)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.parts.items()}
        tensors["__n__"] = torch.tensor([self.n])
        save_file(tensors, str(path), metadata={"order": ",".join(self.parts)})

    @staticmethod
    def load(path: str | Path, device: torch.device | str = "cpu") -> "Noise":
        from safetensors.torch import load_file

        from safetensors import safe_open

        tensors = load_file(str(path), device=str(device))
        n = int(tensors.pop("__n__").item())
        with safe_open(str(path), framework="pt") as f:
            order = [k for k in ((f.metadata() or {}).get("order") or "").split(",") if k]
        names = order if set(order) == set(tensors) else sorted(tensors)  # keep the sampled part order
        return Noise(n, {k: tensors[k] for k in names})


def randn(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise drawn on the generator's device, returned on ``like``'s device."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=like.dtype).to(like.device)


def rand(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform [0,1) noise drawn on the generator's device, returned on ``like``'s device."""
    dev = generator.device if generator is not None else like.device
    return torch.rand(tuple(shape), generator=generator, device=dev, dtype=like.dtype).to(like.device)


class Stage(nn.Module):
    """A transform or purifier step. It names the noise parts it consumes.

    Subclasses set ``noise_names`` and implement ``sample_noise`` (a dict of tensors with the
    batch dimension first) and ``forward(x, noise)``.
    """

    noise_names: tuple[str, ...] = ()

    def sample_noise(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        return {}

    def forward(self, x: Tensor, noise: Noise) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Defense(nn.Module):
    """transform -> purifier -> classifier, each optional but the classifier.

    Subclasses with a purification that does not split into independent stages (e.g.
    AToP's RT3, which purifies several masked copies) override :meth:`purify` and
    :meth:`sample_noise`.
    """

    def __init__(
        self,
        classifier: nn.Module,
        transform: Stage | None = None,
        purifier: Stage | None = None,
        *,
        name: str = "defense",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.transform = transform
        self.purifier = purifier
        self.name = name
        self.info: dict[str, Any] = dict(info or {})
        names = [*(transform.noise_names if transform else ()), *(purifier.noise_names if purifier else ())]
        if len(set(names)) != len(names):
            raise ValueError(f"transform and purifier noise names collide: {names}")
        self._noise_names = tuple(names)

    # --- noise -----------------------------------------------------------------------
    @property
    def noise_names(self) -> tuple[str, ...]:
        return self._noise_names

    @property
    def stochastic(self) -> bool:
        """False means: empty noise, and ``defense(x)`` is deterministic."""
        return bool(self.noise_names)

    @property
    def has_purifier(self) -> bool:
        return self.transform is not None or self.purifier is not None

    def sample_noise(self, x: Tensor, generator: torch.Generator | None = None) -> Noise:
        parts: dict[str, Tensor] = {}
        for stage in (self.transform, self.purifier):
            if stage is not None:
                parts.update(stage.sample_noise(x, generator))
        if set(parts) != set(self.noise_names):
            raise RuntimeError(f"{self.name}: sampled noise parts {sorted(parts)} != declared {self.noise_names}")
        return Noise(x.shape[0], {k: parts[k] for k in self.noise_names})

    def describe_noise(self) -> str:
        return ", ".join(self.noise_names) if self.stochastic else "deterministic (no noise)"

    # --- forward ---------------------------------------------------------------------
    def purify(self, x: Tensor, noise: Noise) -> Tensor:
        """Purified images in [0,1] (identity for a defense without transform/purifier)."""
        if self.transform is not None:
            x = self.transform(x, noise)
        if self.purifier is not None:
            x = self.purifier(x, noise)
        return x

    def forward(
        self, x: Tensor, noise: Noise | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Logits. Without ``noise``, fresh noise is drawn from ``generator``."""
        if noise is None:
            noise = self.sample_noise(x, generator)
        elif noise.n != x.shape[0]:
            raise ValueError(f"noise is for {noise.n} samples, input has {x.shape[0]}")
        return self.classifier(self.purify(x, noise))

    def freeze(self) -> "Defense":
        """Evaluation mode with no parameter gradients: attacks differentiate w.r.t. inputs only."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class ModuleDefense(Defense):
    """Wrap any ``nn.Module`` mapping [0,1] images to logits as a defense.

    Such a module's randomness, if any, is hidden (global RNG), so it is *opaque*: with
    ``stochastic=True`` attacks treat it as random (fresh and EOT work) but nothing can be
    fixed, and a ``fixed`` (DW-box) request is refused.
    """

    def __init__(self, model: nn.Module, *, name: str = "module", stochastic: bool = False,
                 info: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, name=name, info=info)
        self._opaque_stochastic = stochastic

    @property
    def stochastic(self) -> bool:
        return self._opaque_stochastic

    @property
    def opaque(self) -> bool:
        return self._opaque_stochastic

    def describe_noise(self) -> str:
        return "opaque randomness (hidden RNG; fixed noise impossible)" if self.stochastic else super().describe_noise()
