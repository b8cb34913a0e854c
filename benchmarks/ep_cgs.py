"""Equilibrium propagation and convergent graph solvers: one script, one run.

Section "ep" (digits). Data: scikit-learn digits through `jaxdeq.data.load_digits`
(80/20 seeded split, standardised with training statistics, then divided by 4 so the
inputs do not saturate the first layer). One network shape for every row,
`jaxdeq.ep.LayeredNetwork((64, 128, 10))` with sigmoid units (the output layer's
state is the prediction, cost 1/2 ||s_L - onehot(y)||^2), float32, optax adam
(lr --lr, batch 64, --epochs epochs), every relaxation by jaxdeq.Anderson(rtol 1e-4,
atol 1e-6, 256 steps, throw=False: failures are counted, not raised). Rows:

- symmetric network: EP with the symmetric estimator (beta --beta), EP with the
  holomorphic estimator (4 complex nudges on |beta| = --beta), and backpropagation,
  i.e. the exact gradient of the same loss by implicit differentiation through the
  free phase (`jaxdeq.ep.implicit_gradient`);
- asymmetric network (independent feedback weights): generalised EP (symmetric
  estimator), generalised EP + lambda * Jacobian homeostasis (lambda --lam, the
  JVP/VJP estimate on 8 samples of each batch), and backpropagation.

Columns: test accuracy (mean and spread over --seeds), train time per epoch (after
compilation), mean free-phase steps in the last epoch, fraction of free phases that
did not converge (test set), and for asymmetric networks the exact homeostatic loss
||J - J^T||_F^2 / (2n) at the end. Ratio column: EP time / backprop time of the same
network. The EP estimate is run in the same process as backpropagation, on the same
data order.

Section "graph": convergent graph solvers vs a DEQ-GNN and a plain message-passing
GNN on graph tasks with known stationary states generated offline (see
benchmarks/_graph_tasks.py for the tasks, models and columns).

    python benchmarks/ep_cgs.py            # -> benchmarks/results/ep_cgs.{json,md}
    python benchmarks/ep_cgs.py --quick    # smoke test (-> ep_cgs_quick.*)
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jaxdeq
import jaxdeq.data
from jaxdeq import ep


sys.path.insert(0, str(Path(__file__).parent))
from _common import versions  # noqa: E402


RESULTS = Path(__file__).parent / "results"
BATCH = 64
SOLVER = jaxdeq.Anderson(rtol=1e-4, atol=1e-6)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="EP and CGS benchmark (see docstring).")
    p.add_argument("--quick", action="store_true", help="smoke test, about 1 min")
    p.add_argument("--sections", default="ep,graph")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=128)
    return p.parse_args(argv)


EP_ROWS = (
    # (name, symmetric, method, homeostasis)
    ("EP symmetric", True, "symmetric", False),
    ("EP holomorphic N=4", True, "holomorphic", False),
    ("backprop (implicit)", True, "backprop", False),
    ("generalised EP", False, "symmetric", False),
    ("generalised EP + homeostasis", False, "symmetric", True),
    ("backprop (implicit)", False, "backprop", False),
)


def _train_ep(args, symmetric, method, homeostasis, seed, data):
    x, y, xt, yt = data
    onehot = jax.nn.one_hot(y, 10, dtype=jnp.float32)
    net = ep.LayeredNetwork(
        (64, args.hidden, 10), symmetric=symmetric, key=jr.PRNGKey(seed)
    )
    opt = optax.adam(args.lr)
    state = opt.init(eqx.filter(net, eqx.is_inexact_array))
    lam = args.lam if homeostasis else 0.0

    @eqx.filter_jit
    def step(net, state, xb, yb, key):
        if method == "backprop":
            loss, g = jax.vmap(
                lambda a, b: ep.implicit_gradient(net, a, b, solver=SOLVER, throw=False)
            )(xb, yb)
            steps = jnp.zeros(())
        else:
            g, st = jax.vmap(
                lambda a, b: ep.ep_gradient(
                    net,
                    a,
                    b,
                    beta=args.beta,
                    estimator=method,
                    num_nudges=4,
                    solver=SOLVER,
                    throw=False,
                )
            )(xb, yb)
            loss, steps = st.extra["loss"], jnp.mean(st.num_steps)
        g = jax.tree.map(lambda v: jnp.mean(v, 0), g)
        if lam > 0:
            sub = xb[:8]
            s = jax.vmap(
                lambda a: ep.free_phase(net, a, solver=SOLVER, throw=False).value
            )(sub)
            s = jax.lax.stop_gradient(s)
            keys = jr.split(key, sub.shape[0])

            def h(m):
                per = jax.vmap(lambda ss, a, k: ep.homeostatic_loss(m, ss, a, key=k))
                return jnp.mean(per(s, sub, keys))

            gh = eqx.filter_grad(h)(net)
            g = jax.tree.map(lambda a, b: a + lam * b, g, gh)
        updates, state = opt.update(eqx.filter(g, eqx.is_inexact_array), state)
        return eqx.apply_updates(net, updates), state, jnp.mean(loss), steps

    @eqx.filter_jit
    def evaluate(net, xs, ys):
        sol = jax.vmap(lambda a: ep.free_phase(net, a, solver=SOLVER, throw=False))(xs)
        acc = jnp.mean(jnp.argmax(sol.value[-1], -1) == ys)
        failed = jnp.mean(sol.result != jaxdeq.RESULTS.successful)
        asym = jnp.mean(
            jax.vmap(lambda s, a: ep.homeostatic_loss(net, s, a))(
                jax.tree.map(lambda v: v[:32], sol.value), xs[:32]
            )
        )
        return acc, failed, asym

    rng = np.random.default_rng(seed)
    key = jr.PRNGKey(seed + 1000)
    compile_start = time.perf_counter()
    jax.block_until_ready(step(net, state, x[:BATCH], onehot[:BATCH], key))
    compile_time = time.perf_counter() - compile_start
    epoch_times, steps = [], []
    for _ in range(args.epochs):
        perm = rng.permutation(len(x))
        start = time.perf_counter()
        for i in range(0, len(x) - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            key, sub = jr.split(key)
            net, state, loss, st = step(net, state, x[idx], onehot[idx], sub)
            steps.append(st)
        jax.block_until_ready(net)
        epoch_times.append(time.perf_counter() - start)
    acc, failed, asym = evaluate(net, jnp.asarray(xt), jnp.asarray(yt))
    per_epoch = len(x) // BATCH
    return {
        "accuracy": float(acc),
        "failed": float(failed),
        "asymmetry": float(asym),
        "epoch_time_s": statistics.median(epoch_times),
        "compile_time_s": compile_time,
        "free_steps": float(np.mean(np.asarray(steps[-per_epoch:]))),
        "final_loss": float(loss),
    }


def run_ep(args):
    data = jaxdeq.data.load_digits(seed=0)
    data = (data[0] / 4, data[1], data[2] / 4, data[3])
    rows = []
    for name, symmetric, method, homeostasis in EP_ROWS:
        runs = [
            _train_ep(args, symmetric, method, homeostasis, seed, data)
            for seed in range(args.seeds)
        ]
        accs = [r["accuracy"] for r in runs]
        row = {
            "network": "symmetric" if symmetric else "asymmetric",
            "method": name,
            "accuracy_mean": statistics.mean(accs),
            "accuracy_min": min(accs),
            "accuracy_max": max(accs),
            "accuracies": accs,
            "epoch_time_s": statistics.median(r["epoch_time_s"] for r in runs),
            "compile_time_s": statistics.median(r["compile_time_s"] for r in runs),
            "free_steps": statistics.mean(r["free_steps"] for r in runs),
            "failed": statistics.mean(r["failed"] for r in runs),
            "asymmetry": statistics.mean(r["asymmetry"] for r in runs),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    for row in rows:
        bp = [
            r
            for r in rows
            if r["network"] == row["network"] and r["method"].startswith("backprop")
        ][0]
        row["time_ratio_vs_backprop"] = row["epoch_time_s"] / bp["epoch_time_s"]
    return rows


def _ep_table(rows, args):
    lines = [
        f"### Equilibrium propagation on digits (64-{args.hidden}-10 sigmoid, "
        f"{args.epochs} epochs, {args.seeds} seeds)",
        "",
        "| network | method | test acc. (mean [min, max]) | s / epoch | x backprop "
        "| free steps | not converged | asymmetry ‖J−Jᵀ‖²/2n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['method']} | {r['accuracy_mean']:.4f} "
            f"[{r['accuracy_min']:.4f}, {r['accuracy_max']:.4f}] | "
            f"{r['epoch_time_s']:.3f} | {r['time_ratio_vs_backprop']:.2f} | "
            f"{r['free_steps']:.1f} | {r['failed']:.3f} | {r['asymmetry']:.3g} |"
        )
    return lines


def _graph_table(rows):
    if not rows:
        return []
    keys = [k for k in rows[0] if k not in ("task", "model")]
    lines = [
        "### Convergent graph solvers vs DEQ-GNN and message passing",
        "",
        "| task | model | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append(f"| {r['task']} | {r['model']} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 2, 1
    sections = args.sections.split(",")
    out = {
        "args": vars(args),
        "versions": versions(["jax", "equinox", "optax", "optimistix"], jax, jaxdeq),
    }
    lines = ["# Equilibrium propagation and convergent graph solvers", ""]
    if "ep" in sections:
        out["ep"] = run_ep(args)
        lines += _ep_table(out["ep"], args) + [""]
    if "graph" in sections:
        from _graph_tasks import run_graph_benchmark

        seeds = tuple(range(args.seeds))
        out["graph"] = run_graph_benchmark(quick=args.quick, seeds=seeds)
        lines += _graph_table(out["graph"]) + [""]
    RESULTS.mkdir(exist_ok=True)
    stem = "ep_cgs_quick" if args.quick else "ep_cgs"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
