"""Shared attack machinery: noise policies, the attacker's objective, projections, prediction.

Every attack family (PGD, StAdv, AutoAttack, CW) goes through :class:`Objective`, which is the
single place that decides what the attacker sees of a defense:

* the **noise policy** (:class:`NoisePolicy`, parsed from a string) says which random tensors of
  the defense's :class:`~defenses.base.Noise` the attacker knows and how many draws it averages:
  ``fresh`` (new noise for every forward pass, standard white box), ``eot:K`` (each gradient is
  the mean over K draws), ``fixed`` / ``fixed:all`` (DW-box: exactly the evaluation noise) and
  ``fixed:<part>,<part>`` (only the named parts are the evaluation noise, the others are redrawn).
  Tokens combine with ``+``, e.g. ``fixed:forward+eot:10`` averages 10 draws of every part but
  ``forward``. The evaluation noise is drawn by the caller first and passed as ``eval_noise``.
* the **gradient mode**: ``exact`` differentiates through transform, purifier and classifier;
  ``bpda`` uses purify(x) in the forward pass and the identity in the backward pass
  (Athalye et al. 2018), i.e. ``purify(x).detach() + (x - x.detach())``, whose value is exactly
  purify(x) and whose derivative is the identity.
* the **surrogate** (``surrogate_steps=K``, Lee & Kim 2023): gradients go through the same
  diffusion purifier run with K strided denoising steps (``defense.surrogate(K)``), with noise
  derived from the defense's own draw, while every candidate is still judged on the full defense.

All randomness (noise draws, random starts) comes from the ``generator`` argument.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import BenchError
from benchmark.threats import THREATS, parse_fraction
from defenses.base import Defense, Noise

from .family import FAMILIES, get_family


GRAD_MODES: tuple[str, ...] = ("exact", "bpda")
LOSSES: tuple[str, ...] = ("ce", "cw")

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------
# noise policy
# --------------------------------------------------------------------------------------
_POLICY_GRAMMAR = "fresh | eot:K | fixed | fixed:all | fixed:<part>[,<part>...], combined with '+' (e.g. fixed:forward+eot:10)"


@dataclass(frozen=True)
class NoisePolicy:
    """What the attacker knows of the defense's randomness.

    ``eot`` is the number of noise draws averaged per gradient (1 = fresh); ``fixed`` names the
    noise parts taken from the evaluation noise; ``fixed_all`` fixes every part.
    """

    eot: int = 1
    fixed: tuple[str, ...] = ()
    fixed_all: bool = False

    @staticmethod
    def parse(spec: "str | NoisePolicy") -> "NoisePolicy":
        if isinstance(spec, NoisePolicy):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise BenchError(f"bad noise policy {spec!r}; expected {_POLICY_GRAMMAR}")
        tokens = [t.strip() for t in spec.strip().split("+")]
        eot: int | None = None
        fixed: tuple[str, ...] | None = None
        fixed_all = False
        for tok in tokens:
            low = tok.lower()
            if low == "fresh":
                if len(tokens) != 1:
                    raise BenchError(f"bad noise policy {spec!r}: 'fresh' cannot be combined; expected {_POLICY_GRAMMAR}")
                return NoisePolicy()
            m = re.fullmatch(r"eot:(\d+)", low)
            if m:
                if eot is not None:
                    raise BenchError(f"bad noise policy {spec!r}: eot given twice")
                eot = int(m.group(1))
                if eot < 1:
                    raise BenchError(f"bad noise policy {spec!r}: eot:K needs K >= 1")
                continue
            if low == "fixed" or low.startswith("fixed:"):
                if fixed is not None or fixed_all:
                    raise BenchError(f"bad noise policy {spec!r}: fixed given twice")
                rest = tok[len("fixed:"):] if ":" in tok else "all"
                names = [p.strip() for p in rest.split(",")]
                if not all(names):
                    raise BenchError(f"bad noise policy {spec!r}: empty part name; expected {_POLICY_GRAMMAR}")
                if any(n.lower() == "all" for n in names):
                    fixed_all = True
                    fixed = ()
                else:
                    if len(set(names)) != len(names):
                        raise BenchError(f"bad noise policy {spec!r}: a part is named twice")
                    fixed = tuple(names)
                continue
            raise BenchError(f"unknown noise policy {spec!r}; expected {_POLICY_GRAMMAR}")
        return NoisePolicy(eot=eot or 1, fixed=fixed or (), fixed_all=fixed_all)

    def __str__(self) -> str:
        toks = []
        if self.fixed_all:
            toks.append("fixed:all")
        elif self.fixed:
            toks.append("fixed:" + ",".join(self.fixed))
        if self.eot > 1:
            toks.append(f"eot:{self.eot}")
        return "+".join(toks) or "fresh"

    @staticmethod
    def of(params: Mapping[str, Any]) -> "NoisePolicy":
        """The policy of an attack's parameter dict (a preset's or a stored record's; fresh when absent)."""
        return NoisePolicy.parse(params.get("noise_policy", "fresh") or "fresh")

    def with_eot(self, k: int) -> "NoisePolicy":
        """The same fixed parts with ``k`` draws per gradient (``k = 1``: no averaging)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BenchError(f"EOT draws must be a positive integer, got {k!r}")
        return dataclasses.replace(self, eot=k)

    def without_eot(self) -> "NoisePolicy":
        """What the attacker fixes, without the averaging (``fixed:all+eot:10`` -> ``fixed:all``)."""
        return self.with_eot(1)

    @property
    def fixes_any(self) -> bool:
        return self.fixed_all or bool(self.fixed)

    def fixed_names(self, defense: Defense) -> tuple[str, ...]:
        """The noise parts of ``defense`` that come from the evaluation noise."""
        if self.fixed_all:
            return tuple(defense.noise_names)
        return self.fixed

    def check(self, defense: Defense) -> None:
        if self.fixes_any and getattr(defense, "opaque", False):
            raise BenchError(
                f"noise policy {self} needs the defense's noise, but {defense.name!r} is an opaque module whose "
                "randomness is hidden in a global RNG; a plugin must implement sample_noise(x, generator) for "
                "DW-box (fixed) attacks; use fresh or eot:K"
            )
        unknown = [p for p in self.fixed if p not in defense.noise_names]
        if unknown:
            raise BenchError(
                f"noise policy {self} fixes part(s) {unknown}, but defense {defense.name!r} has "
                f"{list(defense.noise_names) or 'no noise parts (it is deterministic)'}"
            )

    def deterministic_for(self, defense: Defense) -> bool:
        """True when the attacker's forward pass is exactly the evaluation's forward pass."""
        if not defense.stochastic:
            return True
        # an opaque stochastic module has no named parts: nothing can be fixed, it is never deterministic
        return bool(defense.noise_names) and set(self.fixed_names(defense)) >= set(defense.noise_names)

    def draws_for(self, defense: Defense) -> int:
        """Noise draws per gradient: K for eot:K, 1 when nothing random is left to average."""
        return 1 if self.deterministic_for(defense) else self.eot


# --------------------------------------------------------------------------------------
# validation of user-facing parameters
# --------------------------------------------------------------------------------------
def parse_number(value: Any, name: str) -> float:
    """A float from a number or a string such as ``"8/255"`` or ``"0.007"`` (CLI overrides)."""
    if isinstance(value, bool):
        raise BenchError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            pass
    raise BenchError(f"{name}: expected a number (e.g. 0.03 or 8/255), got {value!r}")


def check_threat(threat: str, allowed: tuple[str, ...] = THREATS) -> str:
    if threat not in THREATS:
        raise BenchError(f"unknown threat {threat!r}; known: {', '.join(THREATS)}")
    if threat not in allowed:
        raise BenchError(f"threat {threat!r} is not supported here; supported: {', '.join(allowed)}")
    return threat


L2_EPS_MAX = 64.0


def validate_params(threat: str, params: Mapping[str, Any], allowed_threats: tuple[str, ...] = THREATS,
                    family: str | None = None) -> None:
    """Check the attack parameters that are present in ``params`` (raises BenchError): the common
    ones here, then the rules of the registered ``family`` (:mod:`attacks.family`; every registered
    family's when None), with the family's eps bound where it states one."""
    check_threat(threat, allowed_threats)
    p = dict(params)
    fams = [get_family(family)] if family is not None else list(FAMILIES.values())
    if "eps" in p:
        eps = p["eps"]
        # an L2 ball of radius > 1 is still inside the image box (a 32x32x3 image spans up to
        # sqrt(3072) ~ 55): the large-budget diagnostic (benchmark.diagnostics) attacks at 4.0
        top = L2_EPS_MAX if threat == "l2" else 1.0
        if family is not None:
            top = float(fams[0].eps_max.get(threat, top))
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps <= top) or math.isnan(eps):
            raise BenchError(f"eps must be in (0, {top:g}], got {eps!r}")
    for key in ("steps", "restarts", "eval_iter", "square_queries"):
        if key in p and p[key] is not None:
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise BenchError(f"{key} must be a positive integer, got {v!r}")
    if p.get("eot_chunk") is not None:
        v = p["eot_chunk"]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise BenchError(f"eot_chunk must be a positive integer or None, got {v!r}")
    for key in ("step_size", "lr", "c"):
        if key in p and p[key] is not None:
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise BenchError(f"{key} must be > 0, got {v!r}")
    for key in ("kappa", "tau"):
        if key in p and p[key] is not None:
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise BenchError(f"{key} must be >= 0, got {v!r}")
    if "noise_policy" in p:
        NoisePolicy.parse(p["noise_policy"])
    if "grad_mode" in p and p["grad_mode"] not in GRAD_MODES:
        raise BenchError(f"unknown grad_mode {p['grad_mode']!r}; known: {', '.join(GRAD_MODES)}")
    if "loss" in p and p["loss"] not in LOSSES:
        raise BenchError(f"unknown loss {p['loss']!r}; known: {', '.join(LOSSES)}")
    for fam in fams:
        for key, rule in fam.rules.items():
            if key in p:
                rule(key, p[key])


# --------------------------------------------------------------------------------------
# losses, norms, projections
# --------------------------------------------------------------------------------------
def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j per sample (negative means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def make_loss(name: str, kappa: float = 50.0) -> LossFn:
    """Per-sample loss the attacker maximises: cross-entropy, or the CW margin loss
    ``-max(margin, -kappa)`` (Carlini & Wagner 2017; kappa=50 as in Madry et al.'s CIFAR-10 challenge)."""
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="none")
    if name == "cw":
        k = float(kappa)
        return lambda logits, y: -margin(logits, y).clamp(min=-k)
    raise BenchError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def lp_norm(delta: Tensor, threat: str) -> Tensor:
    """Per-sample L-inf or L2 norm."""
    if threat == "linf":
        return _flat(delta).abs().amax(1)
    if threat == "l2":
        return _flat(delta).norm(dim=1)
    raise BenchError(f"lp_norm: threat {threat!r} is not an Lp threat")


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def project(delta: Tensor, x: Tensor, threat: str, eps: float) -> Tensor:
    """Project ``delta`` onto the eps-ball, then so that x + delta lies in [0, 1].

    Clipping to the box after the ball projection never leaves the ball, because x itself is in
    the box (each coordinate only moves towards x)."""
    if threat == "linf":
        delta = delta.clamp(-eps, eps)
    elif threat == "l2":
        n = _flat(delta).norm(dim=1)
        delta = delta * _view(torch.clamp(eps / (n + 1e-12), max=1.0), delta)
    else:
        raise BenchError(f"project: threat {threat!r} is not an Lp threat")
    return (x + delta).clamp(0.0, 1.0) - x


def ascent_step(grad: Tensor, threat: str, step_size: float) -> Tensor:
    """Steepest-ascent step for the norm: sign for L-inf, normalised gradient for L2."""
    if threat == "linf":
        return step_size * grad.sign()
    n = _flat(grad).norm(dim=1)
    return step_size * grad / _view(n.clamp(min=1e-12), grad)


def random_start(x: Tensor, threat: str, eps: float, generator: torch.Generator | None) -> Tensor:
    """A random point of the eps-ball (uniform per coordinate for L-inf; random direction and
    uniform radius for L2), drawn from ``generator`` and clipped to the image box."""
    dev = generator.device if generator is not None else x.device
    if threat == "linf":
        d = (torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        r = torch.rand((x.shape[0],), generator=generator, device=dev, dtype=x.dtype)
        d = d / _view(_flat(d).norm(dim=1).clamp(min=1e-12), d) * _view(r * eps, d)
    return project(d.to(x.device), x, threat, eps)


def full_precision(defense: Any) -> Any:
    """The float32 defense behind an autocast view (:class:`attacks.precision.AutocastDefense`);
    any other defense unchanged. Here, not in attacks.precision, so imports run precision -> core."""
    return getattr(defense, "full_precision", defense)


def default_eot_chunk(device: torch.device | str, draws: int) -> int:
    """Draws per forward/backward: loop on CPU (measured faster there), all at once on CUDA."""
    return draws if torch.device(device).type == "cuda" else 1


# --------------------------------------------------------------------------------------
# the attacker's objective
# --------------------------------------------------------------------------------------
class Objective:
    """Logits, losses and gradients of ``defense`` as the attacker sees them.

    ``loss_grad`` returns the gradient of the mean over ``draws`` noise draws of a per-sample
    loss (EOT), computed ``eot_chunk`` draws per forward/backward pass by replicating the batch
    (``None``: 1 on CPU, all on CUDA). The same forward passes also give each sample's
    misclassification rate and mean margin, which the families use to keep the best iterate.
    Given the bf16 view of a defense (:class:`attacks.precision.AutocastDefense`, ``bench run
    --precision bf16``), ``loss_grad`` runs under autocast while :meth:`evaluate` uses the fp32
    defense behind it.
    """

    def __init__(
        self,
        defense: Defense,
        *,
        noise_policy: "str | NoisePolicy" = "fresh",
        grad_mode: str = "exact",
        generator: torch.Generator | None = None,
        eval_noise: Noise | None = None,
        eot_chunk: int | None = None,
        surrogate_steps: int | None = None,
    ) -> None:
        if grad_mode not in GRAD_MODES:
            raise BenchError(f"unknown grad_mode {grad_mode!r}; known: {', '.join(GRAD_MODES)}")
        self.defense = defense
        self.policy = NoisePolicy.parse(noise_policy)
        self.policy.check(defense)
        self.grad_mode = grad_mode
        self.generator = generator
        self.fixed_names = self.policy.fixed_names(defense) if defense.stochastic else ()
        self.fixes_all = bool(self.fixed_names) and set(self.fixed_names) >= set(defense.noise_names)
        if self.fixed_names and eval_noise is None:
            raise BenchError(
                f"noise policy {self.policy} needs the evaluation noise: draw it first with "
                f"defense.sample_noise(x, generator) and pass eval_noise="
            )
        self.eval_noise = eval_noise if self.fixed_names else None
        self.deterministic = self.policy.deterministic_for(defense)
        self.draws = self.policy.draws_for(defense)
        self.eot_chunk = eot_chunk
        self.grad_defense = surrogate_defense(defense, surrogate_steps) if surrogate_steps is not None else None
        if self.grad_defense is not None:
            # the attacker's losses come from another chain than the evaluation's: never treat them as
            # the evaluation's outcome (no early stop, no best-iterate choice on them)
            self.deterministic = False

    # --- plumbing -------------------------------------------------------------------------
    def select(self, index: Tensor) -> "Objective":
        """The same objective for a subset of the batch (the evaluation noise follows)."""
        other = object.__new__(Objective)
        other.__dict__.update(self.__dict__)
        if self.eval_noise is not None:
            other.eval_noise = self.eval_noise.select(index)
        return other

    def check_batch(self, x: Tensor) -> None:
        if self.eval_noise is not None and self.eval_noise.n != x.shape[0]:
            raise BenchError(f"eval_noise is for {self.eval_noise.n} samples, the batch has {x.shape[0]}")

    def chunk(self, device: torch.device) -> int:
        c = self.eot_chunk if self.eot_chunk is not None else default_eot_chunk(device, self.draws)
        return max(1, min(int(c), self.draws))

    def draw_noise(self, x: Tensor, reps: int = 1, fixed: Noise | None = None) -> Noise:
        """Noise for ``x`` tiled ``reps`` times: fresh draws, with the policy's fixed parts taken
        from ``fixed`` (default: this objective's evaluation noise)."""
        fixed = self.eval_noise if fixed is None else fixed
        if self.fixes_all and fixed is not None:
            return fixed.to(x.device).repeat(reps) if reps > 1 else fixed.to(x.device)
        xr = x.repeat(reps, *([1] * (x.dim() - 1))) if reps > 1 else x
        noise = self.defense.sample_noise(xr.detach(), self.generator)
        if self.fixed_names and fixed is not None:
            f = fixed.to(x.device)
            noise = noise.fix(f.repeat(reps) if reps > 1 else f, self.fixed_names)
        return noise

    def logits(self, x: Tensor, noise: Noise) -> Tensor:
        """Defense logits; with ``bpda`` the purification is the identity in the backward pass."""
        d = self.defense
        if self.grad_mode == "bpda" and d.has_purifier:
            with torch.no_grad():
                purified = d.purify(x.detach(), noise)
            return d.classifier(purified + (x - x.detach()))  # value: purified, exactly
        return d(x, noise)

    def grad_logits(self, x: Tensor, noise: Noise) -> Tensor:
        """The logits gradients flow through: the defense's, or its surrogate's on the derived noise."""
        if self.grad_defense is None:
            return self.logits(x, noise)
        sur = self.grad_defense
        noise = sur.derive_noise(noise)
        if self.grad_mode == "bpda":
            with torch.no_grad():
                purified = sur.purify(x.detach(), noise)
            return sur.classifier(purified + (x - x.detach()))
        return sur(x, noise)

    # --- what the families call ---------------------------------------------------------
    def loss_grad(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor]:
        """(gradient of the mean loss over draws, misclassification rate, mean margin) at ``x``."""
        x = x.detach()
        n = x.shape[0]
        grad = torch.zeros_like(x)
        err = torch.zeros(n, device=x.device)
        mar = torch.zeros(n, device=x.device)
        left = self.draws
        chunk = self.chunk(x.device)
        with torch.enable_grad():
            while left > 0:
                c = min(chunk, left)
                xi = x.clone().requires_grad_(True)
                xr = xi.repeat(c, *([1] * (x.dim() - 1))) if c > 1 else xi
                logits = self.grad_logits(xr, self.draw_noise(x, c))
                yr = y.repeat(c) if c > 1 else y
                loss = loss_fn(logits, yr)
                (g,) = torch.autograd.grad(loss.sum(), xi)
                grad += g
                with torch.no_grad():
                    lg = logits.detach().float()
                    err += (lg.argmax(1) != yr).float().view(c, n).sum(0)
                    mar += margin(lg, yr).view(c, n).sum(0)
                left -= c
        k = float(self.draws)
        return grad / k, err / k, mar / k

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, draws: int | None = None) -> tuple[Tensor, Tensor]:
        """(misclassification rate, mean margin) over ``draws`` forward passes (default: the
        policy's draws; always 1 when the attacker's view is deterministic)."""
        k = 1 if self.deterministic else (self.draws if draws is None else int(draws))
        n = x.shape[0]
        err = torch.zeros(n, device=x.device)
        mar = torch.zeros(n, device=x.device)
        chunk = max(1, min(self.eot_chunk or default_eot_chunk(x.device, k), k))
        full_eval = full_precision(self.defense)  # candidates are judged as the evaluation will see them
        left = k
        while left > 0:
            c = min(chunk, left)
            xr = x.repeat(c, *([1] * (x.dim() - 1))) if c > 1 else x
            yr = y.repeat(c) if c > 1 else y
            lg = full_eval(xr, self.draw_noise(x, c)).float()
            err += (lg.argmax(1) != yr).float().view(c, n).sum(0)
            mar += margin(lg, yr).view(c, n).sum(0)
            left -= c
        return err / k, mar / k


def surrogate_defense(defense: Defense, steps: int) -> Defense:
    """Lee & Kim's attack-side surrogate of a multi-step diffusion purifier: the same weights with
    ``steps`` strided denoising steps (at most the defense's own)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BenchError(f"surrogate_steps must be a positive integer, got {steps!r}")
    make = getattr(defense, "surrogate", None)
    own = getattr(getattr(defense, "purifier", None), "steps", None)
    if make is None or own is None:
        raise BenchError(f"surrogate_steps needs a multi-step diffusion purifier (diffpure, diffpure_ddim, addt); "
                         f"{getattr(defense, 'name', type(defense).__name__)!r} has none")
    if steps > int(own):
        raise BenchError(f"surrogate_steps={steps} exceeds the defense's {own} denoising steps")
    return make(steps)


class Best:
    """Per-sample best candidate: highest misclassification rate, then lowest mean margin."""

    def __init__(self, x: Tensor) -> None:
        self.x = x.detach().clone()
        self.err = torch.full((x.shape[0],), -1.0, device=x.device)
        self.margin = torch.full((x.shape[0],), float("inf"), device=x.device)

    def offer(self, idx: Tensor, xc: Tensor, err: Tensor, mar: Tensor) -> Tensor:
        """Take the candidates ``xc`` for samples ``idx`` where better; returns that mask."""
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=idx.device)
        ce, cm = self.err[idx], self.margin[idx]
        better = (err > ce) | ((err == ce) & (mar < cm))
        if bool(better.any()):
            sel = idx[better]
            self.x[sel] = xc[better].detach()
            self.err[sel] = err[better]
            self.margin[sel] = mar[better]
        return better


# --------------------------------------------------------------------------------------
# nn.Module view for third-party attack libraries
# --------------------------------------------------------------------------------------
def match_rows(x: Tensor, ref: Tensor) -> Tensor:
    """Indices j_0 < j_1 < ... of the reference images that the rows of ``x`` perturb.

    pyautoattack and torchattacks call the model on the whole batch or on subsets selected in
    increasing index order (``x[mask.nonzero()]``), so the rows of ``x`` are small perturbations
    of an increasing subsequence of ``ref``. Nearest reference (L2) per row is the answer
    whenever it is increasing; otherwise (near-duplicate images) a monotone assignment of least
    total distance is computed by dynamic programming.
    """
    m, n = x.shape[0], ref.shape[0]
    if m == n:
        return torch.arange(n, device=x.device)
    if m > n:
        raise RuntimeError(f"model called on {m} samples, more than the {n} being attacked")
    d = torch.cdist(_flat(x).double(), _flat(ref).double())
    idx = d.argmin(1)
    if m <= 1 or bool((idx[1:] > idx[:-1]).all()):
        return idx
    return _monotone_assignment(d.cpu()).to(x.device)


def _monotone_assignment(d: Tensor) -> Tensor:
    m, n = d.shape
    inf = float("inf")
    cost = d[0].clone()
    back = torch.zeros((m, n), dtype=torch.long)
    for i in range(1, m):
        prev = torch.cat([torch.tensor([inf], dtype=d.dtype), cost[:-1]])  # best over j' < j
        pm, parg = torch.cummin(prev, 0)
        parg = parg - 1  # shift: prev[j] holds cost[j-1]
        cost = d[i] + pm
        back[i] = parg
    out = torch.empty(m, dtype=torch.long)
    j = int(cost.argmin())
    for i in range(m - 1, -1, -1):
        out[i] = j
        j = int(back[i, j])
    return out


class PolicyModel(nn.Module):
    """``model(x) -> logits`` of a defense under a noise policy and gradient mode, for libraries
    that only call a module (pyautoattack, torchattacks).

    Every call draws fresh noise for the parts the policy does not fix. Fixed parts come from
    the evaluation noise of the batch bound with :meth:`bind`; rows of a call are mapped to
    their samples with :func:`match_rows` (the libraries call the model on subsets).
    With ``average_draws`` the output is the mean of the logits over the policy's EOT draws
    (for libraries without their own EOT loop).
    """

    def __init__(self, objective: Objective, *, average_draws: bool = False) -> None:
        super().__init__()
        self.defense = objective.defense  # registered, so libraries find its parameters/device
        self.objective = objective
        self.average_draws = average_draws
        self._ref_x: Tensor | None = None
        self._ref_noise: Noise | None = None

    def bind(self, x_ref: Tensor, eval_noise: Noise | None) -> "PolicyModel":
        self._ref_x = x_ref.detach()
        self._ref_noise = eval_noise
        return self

    def forward(self, x: Tensor) -> Tensor:
        obj = self.objective
        fixed = None
        if obj.fixed_names:
            if self._ref_x is None or self._ref_noise is None:
                raise RuntimeError("PolicyModel with fixed noise needs bind(x, eval_noise) first")
            fixed = self._ref_noise.select(match_rows(x.detach(), self._ref_x))
        k = obj.draws if self.average_draws else 1
        out = None
        for _ in range(k):
            lg = obj.logits(x, obj.draw_noise(x, 1, fixed))
            out = lg if out is None else out + lg
        assert out is not None
        return out / k if k > 1 else out


# --------------------------------------------------------------------------------------
# final prediction
# --------------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    defense: Defense,
    x: Tensor,
    *,
    noise_policy: "str | NoisePolicy" = "fresh",
    repeats: int = 1,
    generator: torch.Generator | None = None,
    fixed_noise: Noise | None = None,
    on_logits: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Predicted labels, shape (repeats, N); ``on_logits`` sees every logits tensor (the runner's NaN check).

    ``fresh``/``eot``: every repeat draws new noise. A policy with fixed parts uses
    ``fixed_noise`` (the evaluation noise the attacker was given): repeat 0 uses it entirely;
    later repeats keep the fixed parts and redraw the others (all repeats are identical under
    ``fixed``/``fixed:all``). A deterministic defense gives identical rows.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise BenchError(f"repeats must be a positive integer, got {repeats!r}")
    defense = full_precision(defense)  # reported predictions are always fp32 (see attacks.precision)
    policy = NoisePolicy.parse(noise_policy)
    policy.check(defense)
    names = policy.fixed_names(defense) if defense.stochastic else ()
    if names and fixed_noise is None:
        raise BenchError(f"noise policy {policy} needs fixed_noise (the evaluation noise) for prediction")
    if fixed_noise is not None and names:
        if fixed_noise.n != x.shape[0]:
            raise BenchError(f"fixed_noise is for {fixed_noise.n} samples, the batch has {x.shape[0]}")
        fixed_noise = fixed_noise.to(x.device)
    if not defense.stochastic or (names and set(names) >= set(defense.noise_names)):
        noise = fixed_noise if names else defense.sample_noise(x, generator)
        logits = defense(x, noise)
        if on_logits is not None:
            on_logits(logits)
        return logits.argmax(1).unsqueeze(0).repeat(repeats, 1)
    rows = []
    for r in range(repeats):
        if names:
            noise = fixed_noise if r == 0 else defense.sample_noise(x, generator).fix(fixed_noise, names)
        else:
            noise = defense.sample_noise(x, generator)
        logits = defense(x, noise)
        if on_logits is not None:
            on_logits(logits)
        rows.append(logits.argmax(1))
    return torch.stack(rows)
