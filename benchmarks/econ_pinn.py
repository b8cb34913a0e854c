"""PINN solvers of HJB equations and a Deep Equilibrium Net, against closed forms,
and jaxdeq against DeepXDE and jinns on the same problems.

Two parts, one run:

1. **Race** (cake-eating and Merton, one CPU thread each, pinned to one core): the
   same HJB problem, network (3 x 32 tanh, the same hard state constraint), fixed
   collocation set, loss, float64 and Adam (lr 1e-3, 3000 steps) then L-BFGS (3000)
   for every library; accuracy is evaluated every 250 steps with the clock
   stopped. Reported: the training time to reach V <= 1e-4, c <= 1e-3 (and risky
   share pi <= 1e-3) in relative L2 on 1000 points of [0.1, 4], as ratios
   (ours / theirs), the final errors and the peak memory. The peers run in their
   own processes (benchmarks/econ_pinn_peers.py); the problem definitions, point
   sets and error measures are imported from there, so they are the same.
2. **Accuracy** of `jaxdeq.econ.solve_hjb` with the default `PINN()` settings (as
   a user calls it, shape penalty and initial guesses included) on every
   known-answer model, and of `jaxdeq.econ.solve_deqn` with
   `DEQN.brock_mirman()` (Euler errors on fresh simulated paths, and the savings
   share against the closed form), against the targets of the issue.

    python benchmarks/econ_pinn.py            # writes benchmarks/results/econ_pinn.*
    python benchmarks/econ_pinn.py --seeds 0  # a quicker race
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
CORE = 1  # the race runs every library on this one core

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
).strip()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402


sys.path.insert(0, str(HERE))
import econ_pinn_peers as peers  # noqa: E402
from _common import versions  # noqa: E402

import jaxdeq  # noqa: E402
from jaxdeq import econ, pinn  # noqa: E402


def _pin(core):
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass


def race_ours(problem: str, seed: int, adam: int, lbfgs: int, every: int) -> dict:
    """jaxdeq on the peers' exact problem: fit() on the model's residual."""
    model = econ.CakeEating() if problem == "cake" else econ.Merton()
    assert model.train_max == peers.TRAIN_MAX[problem]
    hjb = model.hjb()
    value = model.value_network(jr.PRNGKey(seed), 32, 3)
    points = jnp.asarray(peers.collocation_points(problem))[:, None]
    x_eval = peers.eval_points()

    def loss(value, points):
        r = jax.vmap(lambda z: hjb.residual(value, z))(points)
        out = jnp.mean(r**2)
        return out, {"hjb": out}

    @eqx.filter_jit
    def derivatives(value):
        def one(w):
            f = lambda w: value(w[None])  # noqa: E731
            return f(w), jax.grad(f)(w), jax.grad(jax.grad(f))(w)

        return jax.vmap(one)(jnp.asarray(x_eval))

    state = {"eval": 0.0, "hit": None, "checkpoints": []}
    start = time.perf_counter()
    result = pinn.fit(
        loss,
        value,
        lambda k, p: points,
        key=jr.PRNGKey(seed + 1),
        adam_steps=adam,
        learning_rate=1e-3,
        lbfgs_steps=lbfgs,
        log_every=every,
        progress=lambda info: _checkpoint(
            info, state, start, derivatives, problem, x_eval
        ),
    )
    return {
        "peer": "jaxdeq",
        "problem": problem,
        "seed": seed,
        "time_to_target_s": state["hit"],
        "train_time_s": state["checkpoints"][-1]["t"],
        "final_errors": state["checkpoints"][-1]["errors"],
        "final_loss": float(result.history["loss"][-1]),
        "steps": int(result.num_steps),
        "lbfgs_stop": result.stop_reason,
        "checkpoints": state["checkpoints"],
        "peak_rss_mib": peers.peak_rss_mib(),
    }


def _checkpoint(info, state, start, derivatives, problem, x_eval):
    now = time.perf_counter()
    t = now - start - state["eval"]
    V, dV, d2V = (np.asarray(a) for a in derivatives(info["params"]))
    errors = peers.rel_errors(problem, x_eval, V, dV, d2V)
    row = {"phase": info["phase"], "step": info["step"], "t": t, "errors": errors}
    state["checkpoints"].append(row)
    if state["hit"] is None and peers.targets_met(problem, errors):
        state["hit"] = t
    state["eval"] += time.perf_counter() - now


def race_peer(peer: str, problem: str, seed: int, adam: int, lbfgs: int, every: int):
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "peer.json"
        cmd = peers.peer_command(
            peer,
            problem,
            str(out),
            python=sys.executable,
            seed=seed,
            adam_steps=adam,
            lbfgs_steps=lbfgs,
            checkpoint_every=every,
        )
        cmd = ["taskset", "-c", str(CORE), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
        if proc.returncode != 0 or not out.exists():
            return {
                "peer": peer,
                "problem": problem,
                "seed": seed,
                "error": (proc.stderr or proc.stdout)[-2000:],
            }
        row = json.loads(out.read_text())
        row["seed"] = seed
        return row


ACCURACY_MODELS = {
    "cake-eating": (lambda: econ.CakeEating(), {}),
    "growth (gamma = alpha)": (lambda: econ.Growth(), {}),
    "merton": (lambda: econ.Merton(), {}),
    "merton, T = 10": (lambda: econ.Merton(horizon=10.0), {"num_points": 1024}),
    "merton, 3 assets": (
        lambda: econ.Merton(
            mu=(0.06, 0.07, 0.08),
            volatility=(0.15, 0.2, 0.25),
            correlation=((1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1)),
        ),
        {},
    ),
    "lqr, d = 20": (
        lambda: econ.LQR(dim=20),
        dict(
            num_points=4096,
            width=64,
            resample_every=100,
            adam_steps=3000,
            lbfgs_steps=2000,
        ),
    ),
}
TARGET_V = {"lqr, d = 20": 1e-3}


def accuracy(seed: int) -> list[dict]:
    rows = []
    for name, (make, settings) in ACCURACY_MODELS.items():
        print(f"accuracy: {name}", flush=True)
        solver = econ.PINN(**settings)
        sol = econ.solve_hjb(make(), solver, key=jr.PRNGKey(seed))
        rep = sol.report
        row = {
            "model": name,
            "settings": settings,
            "value_rel_l2": rep["value"]["rel_l2"],
            "value_target": TARGET_V.get(name, 1e-4),
            "policies_rel_l2": {
                k: v["rel_l2"]
                for k, v in rep.items()
                if isinstance(v, dict) and k not in ("value", "residual")
            },
            "residual_max": rep["residual"]["max_abs"],
            "wall_time_s": rep["wall_time"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("accuracy: brock-mirman", flush=True)
    start = time.perf_counter()
    bm = econ.solve_deqn(
        econ.BrockMirman(), econ.DEQN.brock_mirman(), key=jr.PRNGKey(seed)
    )
    euler = bm.euler
    rows.append(
        {
            "model": "brock-mirman (DEQN)",
            "euler_log10_mean": euler.log10_mean,
            "euler_log10_max": euler.log10_max,
            "euler_log10_p99": euler.log10_p99,
            # The share's relative error is that of K' = s z K^alpha.
            "capital_rel_l2": bm.closed_form_errors()["s"]["rel_l2"],
            "wall_time_s": time.perf_counter() - start,
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    return rows


def _fmt_time(x):
    return "not reached" if x is None else f"{x:.1f} s"


def markdown(out: dict) -> str:
    lines = [
        "# PINN solvers of HJB equations: accuracy and speed",
        "",
        f"Machine: {out['versions']['platform']}, {out['versions']['cpu_count']} "
        "cores; the race runs every library on one pinned core with one thread. "
        "float64 throughout.",
        "",
        "## Race: time to the accuracy targets (same problem, network, points, "
        "optimisers)",
        "",
        "Targets: relative L2 error of V <= 1e-4, of consumption c <= 1e-3 (Merton: "
        "and of the risky share pi <= 1e-3), on 1000 points of [0.1, 4]; checked "
        "every 250 steps with the clock stopped. Ratio = jaxdeq's time / the "
        "peer's (below 1: jaxdeq faster).",
        "",
        "| problem | seed | library | time to target | ratio (jaxdeq / peer) | "
        "final V err | final c err | final pi err | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in out["race"]:
        if "error" in row:
            lines.append(
                f"| {row['problem']} | {row['seed']} | {row['peer']} | failed: "
                f"{row['error'].splitlines()[-1][:80]} | | | | | |"
            )
            continue
        ours = next(
            r
            for r in out["race"]
            if r["peer"] == "jaxdeq"
            and r["problem"] == row["problem"]
            and r["seed"] == row["seed"]
        )
        ratio = ""
        if row["peer"] != "jaxdeq":
            a, b = ours["time_to_target_s"], row["time_to_target_s"]
            ratio = "n/a" if a is None or b is None else f"{a / b:.2f}"
        e = row["final_errors"]
        pi = f"{e['pi']:.1e}" if "pi" in e else ""
        lines.append(
            f"| {row['problem']} | {row['seed']} | {row['peer']} | "
            f"{_fmt_time(row['time_to_target_s'])} | {ratio} | {e['V']:.1e} | "
            f"{e['c']:.1e} | {pi} | {row.get('peak_rss_mib', float('nan')):.0f} |"
        )
    lines += [
        "",
        "## Accuracy of `jaxdeq.econ.solve_hjb` (default `PINN()`) and `solve_deqn` "
        "(`DEQN.brock_mirman()`)",
        "",
        "| model | value rel. L2 (target) | policies rel. L2 | max residual | time |",
        "|---|---|---|---|---|",
    ]
    for row in out["accuracy"]:
        if "euler_log10_mean" in row:
            lines.append(
                f"| {row['model']} | Euler error log10 mean "
                f"{row['euler_log10_mean']:.2f} (target < -5), max "
                f"{row['euler_log10_max']:.2f} (target < -4) | K' rel. L2 "
                f"{row['capital_rel_l2']:.1e} | | {row['wall_time_s']:.0f} s |"
            )
            continue
        pol = ", ".join(f"{k} {v:.1e}" for k, v in row["policies_rel_l2"].items())
        lines.append(
            f"| {row['model']} | {row['value_rel_l2']:.1e} "
            f"({row['value_target']:.0e}) | {pol} | {row['residual_max']:.1e} | "
            f"{row['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--adam-steps", type=int, default=3000)
    ap.add_argument("--lbfgs-steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--peers", nargs="*", default=["deepxde", "jinns"])
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args(argv)
    out = {
        "versions": versions(
            ["jax", "equinox", "optax", "deepxde", "jinns", "torch"], jax, jaxdeq
        ),
        "race": [],
        "accuracy": [],
    }
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    for problem in ("cake", "merton"):
        for seed in args.seeds:
            _pin(CORE)
            print(f"race: jaxdeq {problem} seed {seed}", flush=True)
            row = race_ours(
                problem, seed, args.adam_steps, args.lbfgs_steps, args.every
            )
            out["race"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "checkpoints"}))
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            for peer in args.peers:
                print(f"race: {peer} {problem} seed {seed}", flush=True)
                row = race_peer(
                    peer, problem, seed, args.adam_steps, args.lbfgs_steps, args.every
                )
                out["race"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "checkpoints"}))
    if not args.skip_accuracy:
        out["accuracy"] = accuracy(args.seeds[0])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "econ_pinn.json").write_text(json.dumps(out, indent=1, default=str))
    (RESULTS / "econ_pinn.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
