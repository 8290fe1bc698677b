"""Trade-off tables of a profile with sweeps: paired differences, dominated areas, costs, ablations.

All from the plan (which run is which: method, swept values, ablation) and the summary rows. The
per-run axes are the standard (clean) accuracy, the attack accuracy (AutoAttack where it ran on the
whole test set, else PGD) and the certified accuracy (IBP + CROWN-IBP, which every run has on the
whole test set, so every run is measured alike).

paired.csv       per (setting, alpha): AD-CERT minus MTL-IBP, seed by seed: mean, 95% t-interval,
                 p-value, seeds where AD-CERT is better on both axes, seeds needed to detect 0.3 points
paired_cc_dist.csv  the same, AD-CERT minus CC-DIST (the paper's logit- vs feature-distillation claim)
hypervolume.csv  per (setting, method): the area its curve dominates (per seed, then mean and interval),
                 against a stated reference point, and each comparison of :data:`COMPARISONS` paired
costs.csv        per (setting, method, alpha): training time, with a teacher's time amortised over the
                 students that share it
ablations.csv    per (setting, variant): variant minus the base AD-CERT run of the same seed
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pandas as pd

from harness.config.profile import PlannedRun, Profile
from harness.report.markdown import markdown_table
from harness.report.stats import Interval, hypervolume, paired_difference, paired_p_value, pairs_needed, t_interval

#: The axes of the trade-off: (summary column, label).
CLEAN, CERT = "clean_acc", "cert_crown_ibp"
DETECT = 0.3   # points: the difference the seed count is sized for
#: The methods whose runs form trade-off curves, and the parameter each curve runs through (IBP and
#: CROWN-IBP have none: one point per seed).
CURVE_PARAMETER = {"ibp": None, "crown_ibp": None, "sabr": "box_ratio", "mtl_ibp": "alpha", "cc_dist": "alpha",
                   "ad_cert": "alpha"}
CURVES = tuple(CURVE_PARAMETER)
#: Paired comparisons, seed by seed at the same alpha: (method, baseline, table name).
COMPARISONS = (("ad_cert", "mtl_ibp", "paired"), ("ad_cert", "cc_dist", "paired_cc_dist"))


def attack_column(summary: pd.DataFrame) -> str:
    """AutoAttack accuracy where every run has it on the whole test set, else PGD."""
    if "aa_acc" in summary and summary["aa_acc"].notna().all() and (summary.get("n_autoattack") ==
                                                                     summary["n_test"]).all():
        return "aa_acc"
    return "pgd_acc"


def run_items(profile: Profile, summary: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per measured run: its plan facts (setting, method, alpha, ablation, seed) and its numbers."""
    by_id = summary[summary["status"] == "ok"].set_index("run_id")
    out = []
    for p in profile.plan():
        if p.run_id not in by_id.index:
            continue
        r = by_id.loc[p.run_id]
        sweep = dict(p.sweep)
        knob = CURVE_PARAMETER.get(p.cfg.method)
        out.append({"plan": p, "setting": f"{p.setting.dataset} eps {p.setting.eps_label}", "method": p.cfg.method,
                    "alpha": sweep.get("alpha", p.cfg.params.get("alpha", math.nan)), "sweep": p.sweep,
                    # the value of the parameter the method's curve runs through (alpha; SABR's lambda)
                    "knob": sweep.get(knob, p.cfg.params.get(knob, math.nan)) if knob else math.nan,
                    "ablation": p.ablation, "teacher_of": p.teacher_of, "seed": p.cfg.seed, "row": r})
    return out


def _value(item: dict, column: str) -> float:
    v = item["row"].get(column, math.nan)
    return float(v) if v is not None else math.nan


def _interval_columns(prefix: str, iv: Interval) -> dict[str, float]:
    return {f"{prefix}_mean": iv.mean, f"{prefix}_ci_low": iv.low, f"{prefix}_ci_high": iv.high}


def paired_table(items: list[dict], attack: str, method: str = "ad_cert", baseline: str = "mtl_ibp") -> pd.DataFrame:
    """``method`` minus ``baseline`` (default AD-CERT minus MTL-IBP) at each (setting, alpha), over the
    seeds both have; ablation runs are left out."""
    pairs: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: {method: {}, baseline: {}})
    for it in items:
        if it["method"] in (method, baseline) and not it["ablation"]:
            pairs[(it["setting"], it["alpha"])][it["method"]][it["seed"]] = it
    rows = []
    for (setting, alpha), by in sorted(pairs.items()):
        seeds = sorted(set(by[method]) & set(by[baseline]))
        if not seeds:
            continue
        row: dict[str, Any] = {"setting": setting, "alpha": alpha, "n_seeds": len(seeds)}
        for name, column in (("clean", CLEAN), ("attack", attack), ("certified", CERT)):
            a = [_value(by[method][s], column) for s in seeds]
            b = [_value(by[baseline][s], column) for s in seeds]
            iv = paired_difference(a, b)
            row.update(_interval_columns(f"diff_{name}", iv))
            row[f"p_{name}"] = paired_p_value(a, b)
            row[f"seeds_for_{DETECT}_{name}"] = pairs_needed(DETECT, iv.sd) if iv.n >= 2 else None
        row["seeds_better_on_both"] = sum(
            1 for s in seeds if _value(by[method][s], CLEAN) > _value(by[baseline][s], CLEAN)
            and _value(by[method][s], CERT) > _value(by[baseline][s], CERT))
        row["attack_column"] = attack
        row["comparison"] = f"{method} - {baseline}"
        rows.append(row)
    return pd.DataFrame(rows)


def reference_point(items: list[dict], setting: str) -> tuple[float, float]:
    """The hypervolume reference of a setting: the lowest clean and certified accuracy among its
    certified-training runs (every method of :data:`CURVES`, ablations left out), so every such run
    dominates it. (Adding methods to a profile can lower it, and so change every method's area.)"""
    pts = [(_value(it, CLEAN), _value(it, CERT)) for it in items
           if it["setting"] == setting and it["method"] in CURVES and not it["ablation"]]
    return (min(p[0] for p in pts), min(p[1] for p in pts))


def hypervolume_table(items: list[dict]) -> pd.DataFrame:
    """Per (setting, method): the area of the (clean, certified) plane its runs of one seed dominate."""
    rows = []
    for setting in sorted({it["setting"] for it in items}):
        ref = reference_point(items, setting)
        per: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for it in items:
            if it["setting"] == setting and it["method"] in CURVES and not it["ablation"]:
                per[it["method"]][it["seed"]].append((_value(it, CLEAN), _value(it, CERT)))
        hv = {m: {s: hypervolume(pts, ref) for s, pts in by_seed.items()} for m, by_seed in per.items()}
        for method in sorted(hv):
            iv = t_interval(list(hv[method].values()))
            rows.append({"setting": setting, "method": method, "points_per_seed": max(map(len, per[method].values())),
                         "reference_clean": ref[0], "reference_certified": ref[1], "n_seeds": iv.n,
                         **_interval_columns("hypervolume", iv)})
        for method, baseline, _ in COMPARISONS:
            if method not in hv or baseline not in hv:
                continue
            seeds = sorted(set(hv[method]) & set(hv[baseline]))
            iv = paired_difference([hv[method][s] for s in seeds], [hv[baseline][s] for s in seeds])
            rows.append({"setting": setting, "method": f"{method} - {baseline} (paired)", "points_per_seed": math.nan,
                         "reference_clean": ref[0], "reference_certified": ref[1], "n_seeds": iv.n,
                         **_interval_columns("hypervolume", iv)})
    return pd.DataFrame(rows)


def costs_table(items: list[dict], plan: list[PlannedRun]) -> pd.DataFrame:
    """Training minutes per (setting, method, alpha); a student's (AD-CERT, CC-DIST) with its teacher's
    share (the teacher's time over the number of students of the plan that share it)."""
    students: dict[str, int] = defaultdict(int)
    for p in plan:
        if p.cfg.teacher:
            students[p.cfg.teacher] += 1
    train_time = {it["plan"].run_id: _value(it, "train_time_s") for it in items}
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for it in items:
        if it["teacher_of"]:
            continue
        t = train_time[it["plan"].run_id]
        teacher = it["plan"].cfg.teacher
        share = train_time.get(teacher, math.nan) / students[teacher] if teacher else 0.0
        label = it["ablation"] and f"ablation {it['ablation']}"
        groups[(it["setting"], it["method"], label or "", it["alpha"])].append((t, share))
    rows = []
    for (setting, method, variant, alpha), ts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        own = t_interval([t for t, _ in ts]).mean / 60
        share = t_interval([s for _, s in ts]).mean / 60
        rows.append({"setting": setting, "method": method, "variant": variant, "alpha": alpha, "n_seeds": len(ts),
                     "train_min": own, "teacher_share_min": share, "total_min": own + share})
    return pd.DataFrame(rows)


def best_alpha(items: list[dict], setting: str, method: str = "ad_cert") -> float:
    """The swept alpha with the highest mean of (clean + certified) / 2 over seeds."""
    by: dict[float, list[float]] = defaultdict(list)
    for it in items:
        if it["setting"] == setting and it["method"] == method and not it["ablation"]:
            by[it["alpha"]].append((_value(it, CLEAN) + _value(it, CERT)) / 2)
    return max(by, key=lambda a: sum(by[a]) / len(by[a])) if by else math.nan


def ablation_table(items: list[dict], profile: Profile, attack: str) -> pd.DataFrame:
    """Each ablation variant minus the base AD-CERT run (the sweep's run at ablations.base) of its seed."""
    if profile.ablations is None:
        return pd.DataFrame()
    base = profile.ablations.base
    rows = []
    for setting in sorted({it["setting"] for it in items}):
        base_runs = {it["seed"]: it for it in items if it["setting"] == setting and it["method"] == "ad_cert"
                     and not it["ablation"] and all(it["plan"].cfg.params.get(k) == v for k, v in base.items())}
        best = best_alpha(items, setting)
        for v in profile.ablations.variants:
            var = {it["seed"]: it for it in items if it["setting"] == setting and it["ablation"] == v.name}
            seeds = sorted(set(var) & set(base_runs))
            if not seeds:
                continue
            row: dict[str, Any] = {"setting": setting, "variant": v.name, "base": ", ".join(
                f"{k}={x}" for k, x in base.items()), "sweep_best_alpha": best, "n_seeds": len(seeds)}
            for name, column in (("clean", CLEAN), ("attack", attack), ("certified", CERT)):
                a = [_value(var[s], column) for s in seeds]
                b = [_value(base_runs[s], column) for s in seeds]
                row.update(_interval_columns(f"diff_{name}", paired_difference(a, b)))
                row[f"p_{name}"] = paired_p_value(a, b)
            rows.append(row)
    return pd.DataFrame(rows)


def tradeoff_tables(profile: Profile, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paired tables of a profile that has both methods of a comparison (any profile: the cpu profile's
    AD-CERT, MTL-IBP and CC-DIST are paired by seed too), and, for a profile whose plan has sweeps or
    ablations, its curves' dominated areas, costs and ablations."""
    plan = profile.plan()
    sweeps = any(p.sweep or p.ablation for p in plan)
    items = run_items(profile, summary)
    if not items:
        return {}
    methods = {it["method"] for it in items}
    attack = attack_column(summary[summary["status"] == "ok"])
    tables = {name: paired_table(items, attack, method, baseline) for method, baseline, name in COMPARISONS
              if {method, baseline} <= methods}
    if sweeps:
        tables.update({"hypervolume": hypervolume_table(items), "costs": costs_table(items, plan)})
        if profile.ablations is not None:
            tables["ablations"] = ablation_table(items, profile, attack)
    return tables


# ---- the README's tables (tests/test_readme.py checks the README shows exactly these) -------------------

def _ci(row, prefix: str) -> str:
    mean, low, high = row[f"{prefix}_mean"], row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"]
    if math.isnan(low):
        return f"{mean:+.2f}"
    mark = " *" if low > 0 or high < 0 else ""
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def readme_paired_table(paired: pd.DataFrame) -> str:
    """AD-CERT minus MTL-IBP (``paired``) or minus CC-DIST (``paired_cc_dist``) per alpha: mean and 95%
    t-interval over seeds (* : the interval excludes 0)."""

    settings = len(paired) and paired["setting"].nunique() > 1  # a column for it only where it varies
    rows = []
    for _, r in paired.iterrows():
        rows.append(([r["setting"]] if settings else []) + [
            f"{r['alpha']:g}", int(r["n_seeds"]), _ci(r, "diff_clean"), _ci(r, "diff_attack"),
            _ci(r, "diff_certified"), f"{int(r['seeds_better_on_both'])} of {int(r['n_seeds'])}",
            _seeds(r["seeds_for_0.3_certified"])])
    attack = paired["attack_column"].iloc[0].replace("_acc", "").upper() if len(paired) else "attack"
    head = (["setting"] if settings else []) + [
        "alpha", "seeds", "clean", attack, "certified (IBP + CROWN-IBP)", "AD-CERT better on both",
        f"seeds to detect {DETECT} (certified)"]
    return markdown_table(pd.DataFrame(rows, columns=head))


def _seeds(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v)}"


def readme_hypervolume_table(hv: pd.DataFrame) -> str:
    """Dominated area per method (mean [95% t-interval] over seeds) and the paired AD-CERT - MTL-IBP."""

    rows = [[r["method"], int(r["n_seeds"]), _ci(r, "hypervolume").lstrip("+") if "paired" not in r["method"]
             else _ci(r, "hypervolume")] for _, r in hv.iterrows()]
    return markdown_table(pd.DataFrame(rows, columns=["method", "seeds", "area dominated (points²)"]))


def readme_ablation_table(abl: pd.DataFrame) -> str:
    """Each ablation minus the base AD-CERT run of its seed (mean [95% t-interval]; * excludes 0)."""

    rows = [[r["variant"], int(r["n_seeds"]), _ci(r, "diff_clean"), _ci(r, "diff_attack"), _ci(r, "diff_certified")]
            for _, r in abl.iterrows()]
    return markdown_table(pd.DataFrame(rows, columns=["variant (vs AD-CERT at the base alpha)", "seeds", "clean",
                                                      "attack", "certified"]))


#: The README's tradeoff tables: ``results/tradeoff/<name>.csv`` -> the function that renders it.
README_TABLES = {"paired": readme_paired_table, "paired_cc_dist": readme_paired_table,
                 "hypervolume": readme_hypervolume_table, "ablations": readme_ablation_table}


def readme_markers(name: str, profile: str = "tradeoff") -> tuple[str, str]:
    """The begin / end markers around the table built from ``results/<profile>/<name>.csv`` in a page."""
    return (f"<!-- {name} table: generated by harness.report.tradeoff.{README_TABLES[name].__name__} from "
            f"results/{profile}/{name}.csv -->", f"<!-- end of {profile} {name} table -->")


def readme_table(name: str, df: pd.DataFrame) -> str:
    """The page table of ``results/<profile>/<name>.csv`` (``name`` a key of :data:`README_TABLES`)."""
    return README_TABLES[name](df)
