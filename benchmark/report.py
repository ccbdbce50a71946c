"""Human-readable tables of a run's summary (rich)."""
from __future__ import annotations

from typing import Any

from attacks.core import NoisePolicy

from .threats import eps_text


def budget_text(a: dict[str, Any]) -> str:
    p = a["params"]
    bits = []
    if p.get("eps") is not None:
        e = p["eps"]
        bits.append(f"eps={eps_text(e, a['threat'])}")
    if p.get("steps") is not None:
        bits.append(f"steps={p['steps']}")
    pol = NoisePolicy.of(p)
    if pol != NoisePolicy():
        bits.append(str(pol))
    if p.get("grad_mode", "exact") != "exact":
        bits.append(p["grad_mode"])
    if p.get("eval_iter"):
        bits.append(f"eval_iter={p['eval_iter']}")
    if p.get("square_queries") not in (None, 5000):  # a cut Square budget (5000: AutoAttack's own)
        bits.append(f"square={p['square_queries']}")
    return " ".join(bits)


def _cut(record: dict[str, Any]) -> str:
    """`` (cut: defense steps=5, n=16)`` when the defense's scale cut changed more than the generic limits."""
    from .scalecut import cut_text

    text = cut_text(record) if record.get("scale") != "full" else ""
    return f" (cut: {text})" if text else ""


def summary_table(record: dict[str, Any], summary: dict[str, Any]):
    from rich.table import Table

    k = record.get("eval_repeats", 1)
    title = (f"{record['defense']} | {record['dataset']} {record['source']} {record['subset']} | threat {record['threat']}"
             f" | scale {record['scale']}" + _cut(record) + (f" | protocol {record['protocol']}" if record.get("protocol") else ""))
    scope = "; clean-misclassified images are not attacked" if record.get("attack_scope") == "clean-correct" else ""
    t = Table(title=title, caption=f"95% CI: Clopper-Pearson; robust = correct clean and majority of {k} final forward "
              "pass(es) on the attack's image" + ("; worst-of-k: correct on all k" if k > 1 else "")
              + "; worst case: correct clean and under every attack" + scope)
    cols = ["attack", "budget", "n", "correct", "accuracy", "95% CI"]
    if k > 1:
        cols += ["worst-of-k", "95% CI (worst)"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("attack", "budget") else "right", overflow="fold")
    budgets = {a["attack"]: budget_text(a) for a in record["attacks"]}
    rows = list(summary["attacks"].items())
    if "worst_case" in summary:
        rows.append(("worst case", summary["worst_case"]))
    for name, e in rows:
        lo, hi = e["ci95"]
        r = [name, budgets.get(name, "" if name != "worst case" else "all attacks"), str(e["n"]), str(e["correct"]),
             f"{100 * e['accuracy']:.1f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]"]
        if k > 1:
            wlo, whi = e["worst_of_k_ci95"]
            r += [f"{100 * e['worst_of_k_accuracy']:.1f}%", f"[{100 * wlo:.1f}, {100 * whi:.1f}]"]
        t.add_row(*r)
    for g in summary.get("stochasticity_gap", []):
        t.add_row(f"gap {g['white_box']} - {g['dw_box']}", "stochasticity gap", "", "", f"{100 * g['gap']:+.1f} pts", "")
    return t


def flag_lines(summary: dict[str, Any]) -> list[str]:
    """One line per attack-failure flag of a run (benchmark.diagnostics), each pointing at its doc entry.

    Runs from before the diagnostics (no ``flags`` key) print nothing; a run with diagnostics and
    no flag says so, with what was checked."""
    if "flags" not in summary:
        return []
    flags = [f for f in summary.get("flags") or [] if isinstance(f, dict) and isinstance(f.get("id"), str)]
    if not flags:
        d = summary.get("diagnostics") or {}
        return [f"attack-failure checks: no flag ({d.get('survivors', '?')} survivors, "
                f"{len(d.get('sample_ids') or [])} probed; see docs/FLAGS.md)"]
    return [f"FLAG {f['id']}: {f.get('reason', '')} (what to do: {f.get('doc', 'docs/FLAGS.md#' + f['id'])})"
            for f in flags]
