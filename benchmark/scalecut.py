"""A defense's own cut at a reduced scale, declared as data in its registry entry.

Some defenses cost hundreds of times more per gradient than a classifier (DiffPure: 100 UNet
calls per forward pass), so the generic ``--scale cpu`` limits (steps, EOT, images) do not bring
their default run into minutes. Their registry entry declares what the reduced scale changes
further, e.g.::

    @register_defense("diffpure", ..., scale_cuts={"cpu": {"n": 16, "defense_options": {"steps": 5}}})

Keys: ``n`` (images) and the generic limit keys of ``benchmark.battery.SCALES`` override the
scale's own; ``square_queries`` caps Square's budget (alone and inside AutoAttack);
``defense_options`` are factory keywords (e.g. strided denoising steps). The cut is applied
in one place (:func:`apply_scale_cut`, called where the run's images are chosen), only for what
the user did not set (an explicit ``--defense-opt`` or ``--subset`` wins), and
:func:`scale_limits` is what the run record stores as ``scale_limits`` (so it is hashed) and what
the table title (:func:`cut_text`) and the leaderboard show.

A protocol may declare its own cut for a defense (``scale_cuts: {cpu: {diffpure: {...}}}`` in its
YAML), merged over the registry's: a paper's settings can need another cut than the defense's
default does (ADDT's ``fixed_large`` reverse variance wrecks images in 2 strided steps).
"""
from __future__ import annotations

from typing import Any


def defense_cut(defense: str, scale: str, protocol_cut: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cut the defense's registry entry declares for ``scale`` ({} for none, plugins, zoo models),
    with a protocol's own cut for this defense and scale (``protocol_cut``) merged over it."""
    if scale == "full":
        return {}
    cut: dict[str, Any] = {}
    if ":" not in defense:
        from .registry import DEFENSES, load_builtins

        load_builtins()
        if defense in DEFENSES:
            cut = dict((DEFENSES.get(defense).meta.get("scale_cuts") or {}).get(scale) or {})
    own = dict(protocol_cut or {})
    opts = {**(cut.get("defense_options") or {}), **(own.pop("defense_options", None) or {})}
    cut.update(own)
    if opts:
        cut["defense_options"] = opts
    return cut


def spec_cut(spec: Any) -> dict[str, Any]:
    """The cut in force for a run: its defense's at its scale, under its protocol's (``spec.protocol_cut``)."""
    return defense_cut(spec.defense, spec.scale, getattr(spec, "protocol_cut", None))


def apply_scale_cut(spec: Any) -> Any:
    """Put the cut's defense options into ``spec.defense_options`` where the user set none (in place)."""
    cut = spec_cut(spec)
    opts = cut.get("defense_options") or {}
    if opts:
        merged = dict(spec.defense_options)
        for k, v in opts.items():
            merged.setdefault(k, v)
        spec.defense_options = merged
    return spec


def scale_limits(spec: Any) -> dict[str, Any]:
    """The scale's limits with the defense's cut in force: what the record stores as ``scale_limits``.

    ``defense_options`` lists only the cut's options the run uses (the user may have set others)."""
    from .battery import SCALES

    limits = dict(SCALES[spec.scale])
    cut = spec_cut(spec)
    for k, v in cut.items():
        if k != "defense_options":
            limits[k] = v
    opts = {k: v for k, v in (cut.get("defense_options") or {}).items() if spec.defense_options.get(k) == v}
    if opts:
        limits["defense_options"] = opts
    return limits


def cut_text(record: dict[str, Any]) -> str:
    """What a stored run's scale cut beyond the generic limits, for titles: ``defense steps=5, n=16``."""
    from .battery import SCALES

    limits = record.get("scale_limits") or {}
    generic = SCALES.get(str(record.get("scale")), {})
    bits = [f"defense {k}={v}" for k, v in sorted((limits.get("defense_options") or {}).items())]
    bits += [f"{k}={v}" for k, v in sorted(limits.items()) if k != "defense_options" and generic.get(k) != v]
    return ", ".join(bits)
