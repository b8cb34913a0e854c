"""Section "race" of benchmarks/continuous.py: a fixed-point race on tanh cells.

Problems: f(z) = tanh(W z + b), W Gaussian scaled to spectral norm ||W||_2 in
{0.5, 0.9, 1.2} (the issue's range: contractive to mildly expansive) and {3, 6}
(strongly expansive: many fixed points, where local methods lose their way), widths
n in --widths; b ~ N(0, I); far starts z0 ~ 10 N(0, I). --seeds problems per cell,
float64 so that precision does not decide the race (the caller, continuous.py, runs
this section under `jax.enable_x64(True)`).

Solvers, all at rtol=1e-6, atol=1e-8, step cap 500, called through
`jaxdeq.fixed_point` (for its diagnostics) under one jit + vmap over the problems:
jaxdeq.Homotopy (defaults: fixed-point homotopy, arclength, Tsit5 predictor, dense
Jacobians), optimistix.Newton, jaxdeq.Broyden (defaults), jaxdeq.Anderson (defaults).

A solve succeeds when the solver reports success and the true relative residual
||f(z) - z|| / ||z|| is below 1e-5. Reported per (n, ||W||): success rate, mean solver
steps, evaluations of f and Jacobians formed (Newton: one per step; Homotopy: one per
Runge-Kutta stage, Newton corrector step and tangent; a dense Jacobian costs n
Jacobian-vector products), and time per problem (median of --repeats jitted calls
over the vmapped batch, after a compiled warm-up, divided by the batch size; the
batch runs until its slowest problem stops).
"""

import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx

import jaxdeq


RTOL, ATOL, MAX_STEPS = 1e-6, 1e-8, 500


def _cell(z, args):
    w, b = args
    return jnp.tanh(w @ z + b)


def _problems(n, norm, seeds):
    def make(key):
        k1, k2, k3 = jr.split(key, 3)
        w = jr.normal(k1, (n, n))
        w = norm * w / jnp.linalg.norm(w, 2)
        return w, jr.normal(k2, (n,)), 10.0 * jr.normal(k3, (n,))

    return jax.vmap(make)(jr.split(jr.PRNGKey(1000 * n + int(10 * norm)), seeds))


def _solvers():
    return {
        "Homotopy": jaxdeq.Homotopy(rtol=RTOL, atol=ATOL),
        "Newton": optx.Newton(rtol=RTOL, atol=ATOL),
        "Broyden": jaxdeq.Broyden(rtol=RTOL, atol=ATOL),
        "Anderson": jaxdeq.Anderson(rtol=RTOL, atol=ATOL),
    }


def _counts(name, sol):
    steps = sol.stats["num_steps"]
    if name == "Homotopy":
        return sol.state.num_fn_evals, sol.state.num_linear_solves
    if name == "Newton":
        return steps + 1, steps
    return sol.stats["num_fn_evals"], jnp.zeros_like(steps)


def run_race(widths, norms, seeds, repeats):
    rows = []
    for n in widths:
        for norm in norms:
            ws, bs, z0s = _problems(n, norm, seeds)
            for name, solver in _solvers().items():

                @jax.jit
                def solve(ws, bs, z0s, solver=solver, name=name):
                    def one(w, b, z0):
                        sol = jaxdeq.fixed_point(
                            _cell, solver, z0, (w, b), max_steps=MAX_STEPS, throw=False
                        )
                        evals, jacs = _counts(name, sol)
                        fz = _cell(sol.value, (w, b))
                        res = jnp.linalg.norm(fz - sol.value) / jnp.linalg.norm(
                            sol.value
                        )
                        ok = (sol.result == jaxdeq.RESULTS.successful) & (res < 1e-5)
                        return ok, sol.stats["num_steps"], evals, jacs

                    return jax.vmap(one)(ws, bs, z0s)

                out = jax.block_until_ready(solve(ws, bs, z0s))
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(solve(ws, bs, z0s))
                    times.append(time.perf_counter() - start)
                ok, steps, evals, jacs = (np.asarray(v) for v in out)
                rows.append(
                    {
                        "n": n,
                        "norm": norm,
                        "solver": name,
                        "success": float(ok.mean()),
                        "steps": float(steps.mean()),
                        "fn_evals": float(evals.mean()),
                        "jacobians": float(jacs.mean()),
                        "ms_per_problem": 1e3 * float(np.median(times)) / seeds,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def race_table(rows):
    lines = [
        "| n | ‖W‖₂ | solver | success | steps | f evals | Jacobians | ms / problem |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['norm']} | {r['solver']} | {r['success']:.2f} | "
            f"{r['steps']:.1f} | {r['fn_evals']:.1f} | {r['jacobians']:.1f} | "
            f"{r['ms_per_problem']:.2f} |"
        )
    return "\n".join(lines)
