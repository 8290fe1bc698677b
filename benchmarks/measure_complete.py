"""Measure complete verification (harness.bounds.complete) on the samples a trained run leaves undecided.

Not part of the package: a measurement script for the report. Usage:

    HARNESS_DATA=/work/main/data PYTHONPATH=. nice python benchmarks/measure_complete.py RUN_DIR \
        [--n-test 1000] [--max-samples 40] [--node-limit 2000] [--time-limit 120] [--scipy 5] [--out OUT.json]

Takes the first ``--n-test`` test images, keeps those that are correctly classified, not broken by
PGD-50 (3 restarts, seeded) and not certified by own IBP nor CROWN-IBP (``harness.bounds.certify``),
and runs ``verify_sample`` on the first ``--max-samples`` of them twice: with own-IBP pre-activation
bounds only, and with those intersected with CROWN's intermediate bounds (read from auto_LiRPA's
nodes after ``compute_bounds(method="CROWN")``; measurement only). ``--scipy N`` also solves, for the
first N samples, the most promising class to optimality with highspy and with scipy.optimize.milp
(same program, no early stop) to compare the two interfaces of the same solver.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from harness.attacks import pgd_robust
from harness.bounds import certify, ibp_bounds, margin_lower_bounds
from harness.bounds.complete import _solve_class, verify_sample
from harness.bounds.milp import MILPNetwork, intersect_relu_bounds
from harness.bounds.spec import input_box, spec_matrix
from harness.data import get_info, load_split
from harness.train import RunDir, load_model


def crown_relu_bounds(model, x, y, eps):
    """CROWN's bounds of every ReLU input (auto_LiRPA 0.3 keeps them on the nodes after compute_bounds)."""
    from harness.bounds import lirpa
    from harness.lirpa_compat import BoundedTensor, PerturbationLpNorm

    entry = lirpa._bounded_module(model, x)
    lo, hi = input_box(x, eps)
    norm, _ = lirpa._split_normalize(model)
    a, b, xn = (lo - norm.mean) / norm.std, (hi - norm.mean) / norm.std, (x - norm.mean) / norm.std
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    bx = BoundedTensor(xn, PerturbationLpNorm(eps=eps, norm=float("inf"), x_L=lo, x_U=hi))
    C = spec_matrix(y, entry.num_classes)
    with torch.no_grad():
        entry.bounded.compute_bounds(x=(bx,), C=C, method="CROWN", bound_lower=True, bound_upper=False)
    return [(r.inputs[0].lower.detach().clone(), r.inputs[0].upper.detach().clone()) for r in entry.bounded.relus]


def scipy_solve(program, net, y, j, node_limit, time_limit):
    from scipy.optimize import Bounds, LinearConstraint, milp

    cost, const = program.margin_objective(net, y, j)
    t = time.perf_counter()
    res = milp(cost, integrality=program.integer.astype(int), bounds=Bounds(program.col_lower, program.col_upper),
               constraints=LinearConstraint(program.matrix, program.row_lower, program.row_upper),
               options={"node_limit": node_limit, "time_limit": time_limit, "mip_rel_gap": 0.0})
    dual = getattr(res, "mip_dual_bound", None)
    return time.perf_counter() - t, res.status, (res.fun + const) if res.fun is not None else None, \
        (dual + const) if dual is not None else None, getattr(res, "mip_node_count", None)


def summary(results):
    times = [r.time_s for r in results]
    cls_times = [c.time_s for r in results for c in r.classes if c.verdict not in ("skipped", "not_run")]
    verdicts = {v: sum(r.verdict == v for r in results) for v in ("verified", "counterexample", "unknown")}
    return {"verdicts": verdicts, "n": len(results),
            "sample_time_median_s": statistics.median(times), "sample_time_max_s": max(times),
            "class_time_median_s": statistics.median(cls_times) if cls_times else None,
            "class_time_max_s": max(cls_times) if cls_times else None,
            "classes_solved": len(cls_times), "nodes_total": sum(r.nodes for r in results),
            "wall_clock_limited": sum(r.wall_clock_limited for r in results),
            "unstable_median": statistics.median(sum(c[2] for c in r.counts) for r in results)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--max-samples", type=int, default=40)
    p.add_argument("--node-limit", type=int, default=2000)
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--scipy", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    run = RunDir(Path(args.run))
    cfg = run.read_config()
    model = load_model(run)
    eps = cfg.eps
    x, y = load_split(cfg.dataset, "test")
    x, y = x[:args.n_test], y[:args.n_test]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    with torch.random.fork_rng():
        torch.manual_seed(0)
        robust = pgd_robust(model, x, y, eps, steps=50, restarts=3)
    cert_ibp = certify(model, x, y, eps, "ibp").certified
    cert_cibp = certify(model, x, y, eps, "crown-ibp").certified
    undecided = (correct & robust & ~cert_ibp & ~cert_cibp).nonzero().flatten().tolist()
    print(f"{cfg.dataset} eps={eps} {cfg.method}: n={len(y)} clean={int(correct.sum())} pgd-robust={int(robust.sum())} "
          f"ibp={int(cert_ibp.sum())} crown-ibp={int((cert_ibp | cert_cibp).sum())} undecided={len(undecided)}", flush=True)
    info = get_info(cfg.dataset)
    t = time.perf_counter()
    net = MILPNetwork.from_model(model, info.in_shape)
    print(f"encoding: {time.perf_counter() - t:.2f} s", flush=True)
    rows = {"ibp": [], "crown": []}
    scipy_rows = []
    for n, i in enumerate(undecided[:args.max_samples]):
        xi, yi = x[i:i + 1], y[i:i + 1]
        lo, hi = input_box(xi, eps)
        with torch.no_grad():
            pre_ibp = ibp_bounds(model, lo, hi).preact
        t = time.perf_counter()
        pre_crown = crown_relu_bounds(model, xi, yi, eps)
        crown_s = time.perf_counter() - t
        m_cibp = margin_lower_bounds(model, xi, yi, eps, "crown-ibp")[0]
        m_crown = margin_lower_bounds(model, xi, yi, eps, "crown")[0]
        both = intersect_relu_bounds(pre_ibp, pre_crown)
        r1 = verify_sample(net, model, xi[0], int(yi), eps, pre_ibp, margin_lower=m_cibp,
                           node_limit=args.node_limit, time_limit_s=args.time_limit)
        r2 = verify_sample(net, model, xi[0], int(yi), eps, both, margin_lower=torch.maximum(m_cibp, m_crown),
                           node_limit=args.node_limit, time_limit_s=args.time_limit)
        rows["ibp"].append(r1)
        rows["crown"].append(r2)
        print(f"[{n}] idx={i} ibp-bounds: {r1.verdict} {r1.time_s:.2f}s nodes={r1.nodes} unstable={[c[2] for c in r1.counts]} "
              f"| crown-bounds: {r2.verdict} {r2.time_s:.2f}s (+{crown_s:.2f}s CROWN) nodes={r2.nodes} "
              f"unstable={[c[2] for c in r2.counts]} | {r2.reason[:120]}", flush=True)
        if n < args.scipy:
            from harness.bounds.complete import _CounterexampleCheck, _inner_box32, _milp_box, build_program
            from harness.bounds import fp_tolerance, rounding_scale
            scale = float(rounding_scale(model, xi, yi, eps)[0])
            band = float(fp_tolerance(torch.tensor(scale, dtype=torch.float64), torch.float32))
            lo64, hi64 = _milp_box(xi[0], eps)
            bounds = [(l.double().flatten().numpy() - band, u.double().flatten().numpy() + band) for l, u in both]
            prog = build_program(net, lo64, hi64, bounds)
            solved = [c for c in r2.classes if c.verdict not in ("skipped", "not_run")]
            if not solved:
                continue
            j = solved[0].target
            check = _CounterexampleCheck(model, net.model64, int(yi), _inner_box32(xi[0], eps), net.in_shape)
            hs, _ = _solve_class(prog, net, int(yi), j, band, check, args.node_limit, args.time_limit, 1, False)
            sc = scipy_solve(prog, net, int(yi), j, args.node_limit, args.time_limit)
            scipy_rows.append({"idx": i, "class": j, "highspy_s": hs.time_s, "highspy_lower": hs.lower_bound,
                               "highspy_nodes": hs.nodes, "scipy_s": sc[0], "scipy_status": sc[1],
                               "scipy_fun": sc[2], "scipy_dual": sc[3], "scipy_nodes": sc[4]})
            print("   scipy vs highspy:", scipy_rows[-1], flush=True)
    out = {"run": run.path.name, "undecided": len(undecided), "measured": len(rows["ibp"]),
           "ibp_bounds": summary(rows["ibp"]) if rows["ibp"] else None,
           "crown_bounds": summary(rows["crown"]) if rows["crown"] else None, "scipy": scipy_rows}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
