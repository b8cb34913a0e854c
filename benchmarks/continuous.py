"""Continuous-time models: one script, one run, one table per section.

Three sections, each a function of its own module; what each measures, and how, is
stated exactly in that module's docstring:

- "race" (`continuous_race.run_race`): a fixed-point race on tanh cells
  f(z) = tanh(W z + b), ||W||_2 in --race-norms, widths --race-widths, --race-seeds
  problems per cell, far starts, float64 (this script switches x64 on for the
  section only): jaxdeq.Homotopy, optimistix.Newton, jaxdeq.Broyden and
  jaxdeq.Anderson at rtol 1e-6, step cap 500. Success rate, steps, evaluations,
  Jacobians and time per problem (median of --race-repeats calls after a warm-up).
- "node" (`continuous_node.run_node`): jaxdeq.ode.NeuralODE against torchdiffeq on
  the same MLP vector field (state --node-state, width --node-width, batch
  --node-batch), Dopri5 with a PID controller at rtol = atol in --node-tols, float32:
  forward and forward + backward time (backprop through the solver, and the
  continuous adjoint), NFE, end-state and gradient agreement, memory; ours both as
  one ODE on the whole batch (torchdiffeq's algorithm) and per sample under vmap;
  and the wrapper's overhead, NeuralODE / diffrax.diffeqsolve, from interleaved
  paired timings.
- "digits" (`continuous_digits.run_digits`): NODE, ANODE, HomoODE (learnable shared
  initial point; and fixed at zero) and a DEQ, same encoder and head, trained with
  adam on scikit-learn's digits: test accuracy, forward and backward NFE per
  sample, train-step memory (XLA memory analysis), wall time per epoch, NFE per
  epoch (JSON).

Ratios are ours / theirs from the same run. One thread everywhere: XLA's
--xla_cpu_multi_thread_eigen=false, torch.set_num_threads(--threads), and
OPENBLAS/OMP/MKL_NUM_THREADS, all set before numpy, jax and torch are imported.
Times are medians of repeated calls of AOT-compiled (or jitted) functions after a
warm-up, outputs block_until_ready; compile times are excluded and recorded in the
JSON.

    python benchmarks/continuous.py            # -> benchmarks/results/continuous.*
    python benchmarks/continuous.py --quick    # smoke test (-> continuous_quick.*)
    python benchmarks/continuous.py --sections node,digits
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _floats(text):
    return tuple(float(v) for v in text.split(","))


def _ints(text):
    return tuple(int(v) for v in text.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Continuous-time benchmark (docstring).")
    p.add_argument("--quick", action="store_true", help="smoke test, a few minutes")
    p.add_argument("--sections", help="comma-separated subset of: race,node,digits")
    p.add_argument("--race-widths", type=_ints, help="default 16,64,256 (quick 16)")
    p.add_argument("--race-norms", type=_floats, help="default 0.5,0.9,1.2,3,6")
    p.add_argument("--race-seeds", type=int, help="problems per cell: 16 (quick 4)")
    p.add_argument("--race-repeats", type=int, default=1, help="timed calls per cell")
    p.add_argument("--node-state", type=int, help="default 64 (quick 16)")
    p.add_argument("--node-width", type=int, help="default 128 (quick 32)")
    p.add_argument("--node-batch", type=int, help="default 128 (quick 16)")
    p.add_argument("--node-tols", type=_floats, default=(1e-3, 1e-6))
    p.add_argument("--node-rounds", type=int, help="interleaved rounds: 25 (quick 3)")
    p.add_argument("--node-budget", type=float, help="s per timing group: 8")
    p.add_argument("--overhead-rounds", type=int, help="pairs: 200 (quick 5)")
    p.add_argument("--overhead-budget", type=float, help="s per pair group: 6")
    p.add_argument("--digits-epochs", type=int, help="default 40 (quick 2)")
    p.add_argument("--digits-batch", type=int, default=128)
    p.add_argument("--digits-lr", type=float, default=3e-3)
    p.add_argument("--digits-hidden", type=int, default=32)
    p.add_argument("--digits-width", type=int, default=64)
    p.add_argument("--digits-augment", type=int, default=8)
    p.add_argument("--digits-tol", type=float, default=1e-3)
    p.add_argument("--digits-count-samples", type=int, help="default 32 (quick 4)")
    p.add_argument("--threads", type=int, default=1, help="for torch and XLA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the markdown from the JSON of the last run (no measurements)",
    )
    cfg = p.parse_args(argv)
    q = cfg.quick

    def default(name, full, quick):
        if getattr(cfg, name) is None:
            setattr(cfg, name, quick if q else full)

    default("race_widths", (16, 64, 256), (16,))
    default("race_norms", (0.5, 0.9, 1.2, 3.0, 6.0), (0.9, 6.0))
    default("race_seeds", 16, 4)
    default("node_state", 64, 16)
    default("node_width", 128, 32)
    default("node_batch", 128, 16)
    default("node_rounds", 25, 3)
    default("node_budget", 8.0, 2.0)
    default("overhead_rounds", 200, 5)
    default("overhead_budget", 6.0, 1.0)
    default("digits_epochs", 40, 2)
    default("digits_count_samples", 32, 4)
    # quick: a subset of the data, so that every code path runs in seconds
    cfg.digits_subset = (256, 64) if q else None
    return cfg


CFG = parse_args() if __name__ == "__main__" else None
if CFG is not None:  # must be set before numpy, jax and torch are imported
    if CFG.threads == 1:
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        os.environ["XLA_FLAGS"] = flags
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(CFG.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from continuous_digits import digits_markdown, run_digits  # noqa: E402
from continuous_node import node_markdown, run_node  # noqa: E402
from continuous_race import race_table, run_race  # noqa: E402

import jaxdeq  # noqa: E402


# ------------------------------------------------------------------------ sections
def race_section(cfg) -> dict:
    with jax.enable_x64(True):  # the race is float64; the other sections float32
        rows = run_race(
            cfg.race_widths, cfg.race_norms, cfg.race_seeds, cfg.race_repeats
        )
    return dict(
        config=dict(
            widths=list(cfg.race_widths),
            norms=list(cfg.race_norms),
            seeds=cfg.race_seeds,
            repeats=cfg.race_repeats,
            dtype="float64",
        ),
        rows=rows,
    )


def race_markdown(res) -> str:
    c = res["config"]
    head = (
        f"Fixed points of f(z) = tanh(Wz + b), {c['seeds']} problems per cell, far "
        "starts, float64, rtol 1e-6, at most 500 steps; success = reported success "
        "and true relative residual below 1e-5. Time per problem: median of "
        f"{c['repeats']} call(s) of the vmapped batch after a warm-up, divided by the "
        "batch."
    )
    return "\n\n".join([head, race_table(res["rows"]), race_summary(res["rows"])])


def race_summary(rows):
    cells = {}
    for r in rows:
        cells.setdefault((r["n"], r["norm"]), {})[r["solver"]] = r["success"]
    easy = [c for c, s in cells.items() if min(s.values()) == 1]
    best, tied, beaten, none = [], [], [], []
    for (n, norm), s in cells.items():
        if (n, norm) in easy:
            continue
        others = max(v for k, v in s.items() if k != "Homotopy")
        rates = ", ".join(f"{k} {v:.2f}" for k, v in s.items())
        cell = f"n = {n}, ‖W‖₂ = {norm:g} ({rates})"
        if max(s.values()) == 0:
            none.append(cell)
        elif s["Homotopy"] > others:
            best.append(cell)
        elif s["Homotopy"] == others:
            tied.append(cell)
        else:
            beaten.append(cell)
    text = (
        f"Every solver succeeds on every problem in {len(easy)} of {len(cells)} cells."
    )
    for label, group in (
        ("Homotopy alone has the highest success rate in", best),
        ("Homotopy ties for the highest in", tied),
        ("Homotopy is beaten in", beaten),
        ("Every solver fails every problem in", none),
    ):
        if group:
            text += f" {label} {len(group)}: {'; '.join(group)}."
    return text


def node_section(cfg) -> dict:
    return run_node(
        state=cfg.node_state,
        width=cfg.node_width,
        batch=cfg.node_batch,
        tols=cfg.node_tols,
        rounds=cfg.node_rounds,
        budget_s=cfg.node_budget,
        overhead_rounds=cfg.overhead_rounds,
        overhead_budget_s=cfg.overhead_budget,
        seed=cfg.seed,
        threads=cfg.threads,
    )


def digits_section(cfg) -> dict:
    return run_digits(
        epochs=cfg.digits_epochs,
        batch=cfg.digits_batch,
        lr=cfg.digits_lr,
        hidden=cfg.digits_hidden,
        width=cfg.digits_width,
        augment=cfg.digits_augment,
        tol=cfg.digits_tol,
        count_samples=cfg.digits_count_samples,
        seed=cfg.seed,
        subset=cfg.digits_subset,
    )


# name -> (run(cfg) -> dict, markdown(dict) -> str); a new section is one line here.
SECTIONS = {
    "race": (race_section, race_markdown),
    "node": (node_section, node_markdown),
    "digits": (digits_section, digits_markdown),
}


# ------------------------------------------------------------------------- targets
def targets(results) -> str:
    """The issue's targets, checked against this run."""
    parts = []
    node = results.get("node")
    if node:
        speed = {}
        for r in node["forward"] + node["backward"]:
            if r["impl"].startswith("torchdiffeq"):
                continue
            what = "forward" if "backward" not in r else f"fwd + bwd ({r['backward']})"
            speed[what, r["tol"], r["mode"]] = 1 / r["ratio_vs_torch"]
        lines = []
        for what, tol in dict.fromkeys((w, t) for w, t, _ in speed):
            cells = []
            for mode in ("batch", "vmap"):
                v = speed.get((what, tol, mode))
                verdict = "met" if v is not None and v >= 2 else "missed"
                cells.append("—" if v is None else f"{v:.2g}× ({verdict})")
            lines.append([what, f"{tol:g}", *cells])
        parts.append(
            "Speed-up over torchdiffeq (torchdiffeq time / ours; target ≥ 2×):\n\n"
            + _table(
                [
                    "timed",
                    "rtol = atol",
                    "ours, batch as one ODE (same algorithm)",
                    "ours, vmap per sample",
                ],
                lines,
            )
        )
        med = [r["paired_ratio"]["median"] for r in node["overhead"]]
        worst = max(node["overhead"], key=lambda r: r["paired_ratio"]["median"])
        ok = "met" if max(med) < 1.05 else "missed"
        parts.append(
            "NeuralODE / diffrax.diffeqsolve (target: overhead < 5 %): paired median "
            f"ratios from {min(med):.3f} to {max(med):.3f} over {len(med)} "
            f"configurations (highest: {worst['what']}, backward {worst['adjoint']}, "
            f"{worst['mode']}, rtol {worst['tol']:g}) — {ok}."
        )
    if results.get("race"):
        parts.append(
            "Race (target: Homotopy has the highest success rate): "
            + race_summary(results["race"]["rows"])
        )
    return "\n\n".join(parts)


def _table(cols, lines):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
    return "\n".join(out)


# -------------------------------------------------------------------------- driver
def versions():
    return _common.versions(
        (
            "jax",
            "jaxlib",
            "equinox",
            "diffrax",
            "optimistix",
            "optax",
            "numpy",
            "scikit-learn",
            "torch",
            "torchdiffeq",
            "jaxdeq",
        ),
        jax,
        jaxdeq,
    )


def finite(v):
    """JSON-safe copy: NaN/inf become null; numpy scalars become Python numbers."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def main(cfg):
    stem = "continuous_quick" if cfg.quick else "continuous"
    out = Path(cfg.out)
    if cfg.render_only:
        record = json.loads((out / f"{stem}.json").read_text())
        write_markdown(out / f"{stem}.md", record)
        return
    env, t0 = versions(), time.perf_counter()
    print("versions:", json.dumps(env), flush=True)
    names = (cfg.sections or ",".join(SECTIONS)).split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown --sections {unknown}; choose from {list(SECTIONS)}")
    results = {}
    for name in names:
        print(f"section {name}", flush=True)
        t = time.perf_counter()
        results[name] = SECTIONS[name][0](cfg)
        results[name]["wall_s"] = time.perf_counter() - t
    env.update(loadavg_at_end=os.getloadavg(), wall_s=time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(cfg).items() if k not in ("out", "render_only")}
    record = finite({"config": config, "versions": env, "sections": results})
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    print("\n" + write_markdown(out / f"{stem}.md", record))


def write_markdown(path, record) -> str:
    env, results = record["versions"], record["sections"]
    md = [
        "# Continuous-time models",
        "What is measured and how: the docstrings of `benchmarks/continuous.py`, "
        "`continuous_race.py`, `continuous_node.py` and `continuous_digits.py`.",
        f"Config: `{json.dumps(record['config'])}`; load average"
        f" {env['loadavg_at_start'][0]:.1f} at start, {env['loadavg_at_end'][0]:.1f}"
        f" at end (2 cores shared with other work); total {env['wall_s']:.0f} s.",
    ]
    for name, res in results.items():
        md.append(f"## {name} ({res['wall_s']:.0f} s)")
        md.append(SECTIONS[name][1](res))
    md.append("## Targets (issue 3/8)\n\n" + targets(results))
    path.write_text("\n\n".join(md) + "\n")
    return "\n\n".join(md[3:])


if __name__ == "__main__":
    main(CFG)
