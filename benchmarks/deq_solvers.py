"""Fixed-point solvers for a deep equilibrium layer: one script, one run, one table.

Problem. z = tanh(W z + U x + b), batch 128, input 64, hidden 256, float32, z0 = 0;
a "training step" is loss = mean(z*^2) and its implicit gradient w.r.t. W, U, b.
Regimes (fixed numpy seed): (i) W Gaussian rescaled to spectral norm 0.9; (ii) slow
modes, W = Q diag(0.99..0.95) Q^T + (a map of norm 0.5 on the complement of the 8-dim
random subspace Q), inputs scaled by 0.1; (iii) rotation, W = 0.99 * random
orthogonal, inputs scaled by 0.1.

Peers, all with the same step cap (--max-steps 2000), JAX ones vmapped per sample:
optimistix FixedPointIteration with optx.ImplicitAdjoint (its default dense-LU solve,
and again with lineax GMRES rtol 1e-6, atol 1e-8, restart 30); jaxopt
AndersonAcceleration and Broyden (jaxopt implicit diff, jax.scipy GMRES tol 1e-6);
TorchDEQ anderson / broyden / fixed_point_iter (CPU torch, the torchdeq.get_deq layer
with ift=True: torchdeq's implicit backward, solved by the forward's solver at rel
1e-6); jaxdeq Anderson and Broyden with jaxdeq.ImplicitAdjoint (default backward
solver jaxdeq.Anderson(rtol=1e-6), step cap raised to --max-steps; Anderson also with
the GMRES above, "+GMRES-adjoint"). Anderson memory 5 with each library's default
ridge (torchdeq 1e-4 and jaxopt 1e-5 absolute, jaxdeq 1e-4 times the mean squared
residual); absolute ridges swamp the small residual Gram matrices of (ii)/(iii), so
both peers also run with ridge 1e-8. Broyden without line search, memory 30 (jaxopt:
100; with 30 it returned NaN once its buffer wrapped around, and its default full
history, 2000 here, costs 0.3 s a step).

Forward stopping tests, tol = 1e-4. jaxdeq: per sample ||f(z)-z|| <= tol ||f(z)||.
torchdeq (stop_mode='rel'): ||f(z)-z|| / (||f(z)|| + 1e-9) < tol for the batch max.
optimistix and jaxopt only have absolute or element-wise tests, so they get the
per-sample absolute tolerance tol ||z*|| (z* a float64 reference): the same test up
to O(tol). Every answer is re-checked the same way in float64: "max rel res" = max
over the batch of ||f(z)-z|| / (||f(z)|| + 1e-12), converged if <= 1.1 tol (float32
slack); "grad err" = relative error w.r.t. the float64 implicit gradient.

Measured. NFE = batched cell evaluations of the forward (a vmapped loop runs until its
slowest sample stops, so the max over samples; the mean is in the JSON). bwd = the
torch step's vector-Jacobian products (counted) or jaxdeq's reported backward steps
(GMRES restart cycles of <= 30 products, or Anderson steps; "(failed)": it reports
missing its tolerance); not available for optimistix and jaxopt. Times: median of up
to --repeats (7) calls, fewer once 4 s are spent, after a warm-up call (compile
excluded; for torch the memory-profiled call); JAX outputs block_until_ready; one
thread per framework (torch.set_num_threads(1), XLA's
--xla_cpu_multi_thread_eigen=false). Memory: JAX = XLA compiled memory analysis, temp
+ output bytes; torch = peak of net CPU-allocator bytes during a call, from the torch
profiler's memory events (profile_memory=True). Overhead = 1 - NFE t_cell / t_fwd,
t_cell = one batched cell evaluation of the same framework (a jitted loop in JAX).
Ratio columns: jaxdeq Anderson (resp. Broyden) divided by that row.

    python benchmarks/deq_solvers.py          # -> benchmarks/results/deq_solvers.*
    python benchmarks/deq_solvers.py --quick  # smoke test: tiny problem, regime (ii)
Peers that are not installed (jaxopt, torch, torchdeq, jaxdeq) are skipped.
"""

import argparse
import functools as ft
import importlib
import importlib.metadata
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="DEQ solver benchmark (see docstring).")
    p.add_argument("--quick", action="store_true", help="tiny problem, regime (ii)")
    p.add_argument("--repeats", type=int, help="max timed calls per measurement")
    p.add_argument("--max-steps", type=int, default=2000, help="step cap, for all")
    p.add_argument("--threads", type=int, default=1, help="for torch and XLA")
    p.add_argument("--regimes", help="comma-separated subset of i,ii,iii")
    p.add_argument("--solvers", default="", help="comma-separated name substrings")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    cfg = p.parse_args(argv)
    cfg.batch, cfg.n_in, cfg.hidden = (16, 8, 48) if cfg.quick else (128, 64, 256)
    cfg.repeats = cfg.repeats or (1 if cfg.quick else 7)
    cfg.regimes = cfg.regimes or ("ii" if cfg.quick else "i,ii,iii")
    cfg.max_steps = min(cfg.max_steps, 400) if cfg.quick else cfg.max_steps
    cfg.tol, cfg.bwd_tol = 1e-4, 1e-6
    return cfg


CFG = parse_args() if __name__ == "__main__" else None
if CFG is not None and CFG.threads == 1:  # must be set before jax is imported
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = flags

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import optimistix as optx  # noqa: E402
from _common import torch_peak_bytes  # noqa: E402


def optional(name):
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure means "skip this peer"
        print(f"note: {name} not available ({type(e).__name__}: {e}); skipped")
        return None


jaxopt = optional("jaxopt")
torch = optional("torch")
torchdeq_solver = optional("torchdeq.solver") if torch else None
torchdeq_core = optional("torchdeq.core") if torchdeq_solver else None
jaxdeq = optional("jaxdeq")
OURS = ("jaxdeq.Anderson", "jaxdeq.Broyden")  # the solvers of the ratio columns


# ------------------------------------------------------------------------- problem
def make_problem(regime, batch, n_in, hidden, seed=0):
    """Float64 (W, U, b, x); the cell's input term is x U^T + b."""
    rng = np.random.default_rng([seed, ("i", "ii", "iii").index(regime)])
    U = rng.standard_normal((hidden, n_in)) / np.sqrt(n_in)
    b = 0.1 * rng.standard_normal(hidden)
    x = rng.standard_normal((batch, n_in))
    scale = 0.1
    if regime == "i":
        W = rng.standard_normal((hidden, hidden))
        W, scale = W * 0.9 / np.linalg.norm(W, 2), 1.0
    elif regime == "ii":
        Q = np.linalg.qr(rng.standard_normal((hidden, 8)))[0]
        P = np.eye(hidden) - Q @ Q.T
        A = P @ rng.standard_normal((hidden, hidden)) @ P
        slow = Q @ np.diag(np.linspace(0.99, 0.95, 8)) @ Q.T
        W = slow + 0.5 * A / np.linalg.norm(A, 2)
    else:
        W = 0.99 * np.linalg.qr(rng.standard_normal((hidden, hidden)))[0]
    return W, scale * U, scale * b, x


def rel_residual(W, inj, z):
    z = np.asarray(z, np.float64)
    fz = np.tanh(z @ W.T + inj)
    return np.linalg.norm(fz - z, axis=1) / (np.linalg.norm(fz, axis=1) + 1e-12)


def reference(W, U, b, x):
    """Float64 fixed points (Picard, then Newton) and the exact implicit gradient."""
    inj, eye = x @ U.T + b, np.eye(W.shape[0])
    z = np.zeros_like(inj)
    for _ in range(50):
        z = np.tanh(z @ W.T + inj)
    for _ in range(30):  # Newton on tanh(Wz + inj) - z
        fz = np.tanh(z @ W.T + inj)
        jac = (1 - fz**2)[:, :, None] * W - eye
        z = z - np.linalg.solve(jac, (fz - z)[..., None])[..., 0]
        if rel_residual(W, inj, z).max() < 1e-13:
            break
    d, v = 1 - z**2, 2 * z / z.size  # tanh' and dL/dz for L = mean(z^2)
    lhs = eye - np.transpose(d[:, :, None] * W, (0, 2, 1))  # I - J^T per sample
    a = d * np.linalg.solve(lhs, v[..., None])[..., 0]  # dL/d(pre-activation)
    return z, np.concatenate([(a.T @ z).ravel(), (a.T @ x).ravel(), a.sum(0)])


def timeit(fn, repeats, sync=lambda out: out, warmup=True, budget_s=4.0):
    """Wall times of up to `repeats` calls (fewer once `budget_s` is spent)."""
    if warmup:
        sync(fn())
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        out = sync(fn())
        times.append(time.perf_counter() - t0)
    return times, out


# --------------------------------------------------------------------- JAX solvers
def cell(z, args):
    W, inj = args
    return jnp.tanh(W @ z + inj)


def jax_solvers(cfg):
    """name -> per-sample solve(W, inj, zscale, probe) -> (z, nfe, reports success)."""
    gmres = lx.GMRES(rtol=cfg.bwd_tol, atol=1e-8, restart=30, stagnation_iters=30)
    z0, tol, steps = jnp.zeros(cfg.hidden), cfg.tol, cfg.max_steps

    def plain(adjoint):
        def solve(W, inj, zscale, probe=None):
            atol, norm = tol * zscale, optx.two_norm
            fpi = optx.FixedPointIteration(rtol=0.0, atol=atol, norm=norm)
            sol = optx.fixed_point(
                cell, fpi, z0, (W, inj), max_steps=steps, adjoint=adjoint, throw=False
            )
            ok = sol.result == optx.RESULTS.successful
            return sol.value, sol.stats["num_steps"], ok

        return solve

    out = {
        "optx.FixedPointIteration": plain(optx.ImplicitAdjoint()),
        "optx.FixedPointIteration+GMRES": plain(optx.ImplicitAdjoint(gmres)),
    }
    if jaxopt:
        implicit = ft.partial(jaxopt.linear_solve.solve_gmres, tol=cfg.bwd_tol)
        fp = lambda z, W, inj: cell(z, (W, inj))

        def jaxopt_solve(make):
            def solve(W, inj, zscale, probe=None):
                solver = make(
                    tol=tol * zscale, maxiter=steps, implicit_diff_solve=implicit
                )
                z, state = solver.run(z0, W, inj)
                return z, state.num_fun_eval, state.error <= solver.tol

            return solve

        anderson = ft.partial(jaxopt.AndersonAcceleration, fp, history_size=5)
        root = lambda z, W, inj: fp(z, W, inj) - z
        out["jaxopt.AndersonAcceleration"] = jaxopt_solve(anderson)
        out["jaxopt.AndersonAcceleration[ridge=1e-8]"] = jaxopt_solve(
            ft.partial(anderson, ridge=1e-8)
        )
        out["jaxopt.Broyden"] = jaxopt_solve(
            ft.partial(jaxopt.Broyden, root, stepsize=1.0, history_size=100)
        )
    if jaxdeq:

        def ours(solver, adjoint):
            def solve(W, inj, zscale, probe=None):
                sol = jaxdeq.fixed_point(
                    cell,
                    solver,
                    z0,
                    (W, inj),
                    max_steps=steps,
                    adjoint=adjoint,
                    throw=False,
                    backward_stats=probe,
                )
                ok = sol.result == jaxdeq.RESULTS.successful
                return sol.value, sol.stats["num_fn_evals"], ok

            return solve

        anderson = jaxdeq.Anderson(rtol=tol, atol=0.0)
        broyden = jaxdeq.Broyden(rtol=tol, atol=0.0, memory=30)
        default = jaxdeq.ImplicitAdjoint(max_steps=steps, throw=False)  # Anderson
        by_gmres = jaxdeq.ImplicitAdjoint(linear_solver=gmres, throw=False)
        out["jaxdeq.Anderson"] = ours(anderson, default)
        out["jaxdeq.Anderson+GMRES-adjoint"] = ours(anderson, by_gmres)
        out["jaxdeq.Broyden"] = ours(broyden, default)
    return out


def compile_with_memory(fn, *args):
    """AOT-compile once; return the executable and its XLA temp + output bytes."""
    compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    nbytes = None if m is None else m.temp_size_in_bytes + m.output_size_in_bytes
    return compiled, nbytes


def run_jax(name, one, prob, cfg):
    params, x, zscale = prob["jax"]

    def forward(params, x, zscale):
        W, U, b = params
        return jax.vmap(one, in_axes=(None, 0, 0))(W, x @ U.T + b, zscale)

    def loss(params, x, zscale, probe):
        W, U, b = params
        batched = jax.vmap(one, in_axes=(None, 0, 0, 0))
        z, nfe, _ = batched(W, x @ U.T + b, zscale, probe)
        return jnp.mean(z**2), nfe

    # jaxdeq reports backward statistics as the gradient of a probe; others ignore it.
    probe = jnp.zeros(x.shape[0])
    if name.startswith("jaxdeq"):
        probe = jaxdeq.BackwardStats.probe((x.shape[0],))
    step = jax.value_and_grad(loss, argnums=(0, 3), has_aux=True)
    fwd, mem_fwd = compile_with_memory(forward, params, x, zscale)
    step, mem_step = compile_with_memory(step, params, x, zscale, probe)
    sync, n = jax.block_until_ready, cfg.repeats
    t_fwd, (z, nfe, ok) = timeit(lambda: fwd(params, x, zscale), n, sync)
    t_step, out = timeit(lambda: step(params, x, zscale, probe), n, sync)
    grads, bstats = out[1]
    bwd = {"bwd_steps": None}
    if hasattr(bstats, "num_steps"):
        bwd = dict(
            bwd_steps=float(np.max(bstats.num_steps)),
            bwd_success=float(np.min(bstats.success)),
            bwd_residual=float(np.max(bstats.rel_residual)),
        )
    grad = np.concatenate([np.asarray(g, np.float64).ravel() for g in grads])
    return dict(
        nfe=int(np.max(nfe)),
        nfe_mean=float(np.mean(nfe)),
        says_converged=bool(np.all(ok)),
        t_fwd=t_fwd,
        t_step=t_step,
        mem_fwd=mem_fwd,
        mem_step=mem_step,
        z=np.asarray(z),
        grad=grad,
        **bwd,
    )


def jax_cell_time(prob, cfg, evals=200):
    (W, U, b), x, _ = prob["jax"]
    inj = x @ U.T + b
    batched = jax.vmap(cell, in_axes=(0, (None, 0)))
    body = lambda _, z: batched(z, (W, inj))
    loop = jax.jit(lambda z: jax.lax.fori_loop(0, evals, body, z))
    run = lambda: loop(jnp.zeros_like(inj))
    return statistics.median(timeit(run, cfg.repeats, jax.block_until_ready)[0]) / evals


# ------------------------------------------------------------------- torch solvers
def torch_solvers(cfg):
    """name -> torchdeq solver key (registered with the shared settings)."""
    if not torchdeq_core:
        return {}
    get, register = torchdeq_solver.get_solver, torchdeq_solver.register_solver
    register("bench_anderson", ft.partial(get("anderson"), m=5))  # default lam=1e-4
    register("bench_anderson_lam", ft.partial(get("anderson"), m=5, lam=1e-8))
    register("bench_broyden", ft.partial(get("broyden"), LBFGS_thres=30, ls=False))
    return {
        "torchdeq.anderson": "bench_anderson",
        "torchdeq.anderson[lam=1e-8]": "bench_anderson_lam",
        "torchdeq.broyden": "bench_broyden",
        "torchdeq.fixed_point_iter": "fixed_point_iter",
    }


def run_torch(name, key, prob, cfg):
    W, U, b, x = (torch.tensor(a, dtype=torch.float32) for a in prob["np"])
    for p in (W, U, b):
        p.requires_grad_(True)
    deq = torchdeq_core.get_deq(
        f_solver=key,
        b_solver=key,
        f_max_iter=cfg.max_steps,
        b_max_iter=cfg.max_steps,
        f_tol=cfg.tol,
        b_tol=cfg.bwd_tol,
        f_stop_mode="rel",
        b_stop_mode="rel",
        ift=True,
    )
    calls, vjps, ok = [0], [0], [False]

    class CountVJP(torch.autograd.Function):  # identity that counts backward calls
        @staticmethod
        def forward(ctx, y):
            return y.view_as(y)

        @staticmethod
        def backward(ctx, g):
            vjps[0] += 1
            return g

    def solve():
        inj = x @ U.T + b

        def f(z):
            calls[0] += 1
            out = torch.tanh(z @ W.T + inj)
            return CountVJP.apply(out) if torch.is_grad_enabled() else out

        z_out, info = deq(f, torch.zeros(x.shape[0], W.shape[0]))
        ok[0] = bool((info["rel_lowest"] < cfg.tol).all())
        return z_out[-1]

    def forward():
        calls[0] = 0
        deq.eval()
        with torch.no_grad():
            return solve()

    def step():
        vjps[0] = 0
        deq.train()
        for p in (W, U, b):
            p.grad = None
        z = solve()
        (z**2).mean().backward()
        return z

    mem_fwd, mem_step = torch_peak_bytes(forward), torch_peak_bytes(step)  # warm-up
    t_fwd, z = timeit(forward, cfg.repeats, warmup=False)
    nfe, says_converged = calls[0], ok[0]
    t_step, _ = timeit(step, cfg.repeats, warmup=False)
    grad = np.concatenate([p.grad.double().numpy().ravel() for p in (W, U, b)])
    return dict(
        nfe=nfe,
        nfe_mean=float(nfe),
        says_converged=says_converged,
        bwd_steps=vjps[0],
        t_fwd=t_fwd,
        t_step=t_step,
        mem_fwd=mem_fwd,
        mem_step=mem_step,
        z=z.detach().numpy(),
        grad=grad,
    )


def torch_cell_time(prob, cfg, evals=200):
    W, U, b, x = (torch.tensor(a, dtype=torch.float32) for a in prob["np"])
    inj = x @ U.T + b

    def loop():
        with torch.no_grad():
            z = torch.zeros_like(inj)
            for _ in range(evals):
                z = torch.tanh(z @ W.T + inj)
        return z

    return statistics.median(timeit(loop, cfg.repeats)[0]) / evals


# -------------------------------------------------------------------------- driver
def run_regime(regime, cfg):
    W, U, b, x = make_problem(regime, cfg.batch, cfg.n_in, cfg.hidden)
    z_ref, g_ref = reference(W, U, b, x)
    inj, f32 = x @ U.T + b, lambda a: jnp.asarray(a, jnp.float32)
    zscale = np.linalg.norm(z_ref, axis=1)
    prob = {"np": (W, U, b, x), "jax": ((f32(W), f32(U), f32(b)), f32(x), f32(zscale))}
    jobs = [(n, "jax", s) for n, s in jax_solvers(cfg).items()]
    jobs += [(n, "torch", k) for n, k in torch_solvers(cfg).items()]
    wanted = [w for w in cfg.solvers.split(",") if w]
    jobs = [j for j in jobs if not wanted or any(w in j[0] for w in wanted)]
    t_cell = {"jax": jax_cell_time(prob, cfg)}
    if any(fw == "torch" for _, fw, _ in jobs):
        t_cell["torch"] = torch_cell_time(prob, cfg)
    rows = []
    for name, fw, solver in jobs:
        t0 = time.perf_counter()
        try:
            r = (run_jax if fw == "jax" else run_torch)(name, solver, prob, cfg)
        except Exception as e:  # noqa: BLE001 - report a crashing solver, go on
            err = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"  ({regime}) {name}: CRASHED: {err[:400]}", flush=True)
            rows.append(dict(regime=regime, solver=name, error=err))
            continue
        res, g = rel_residual(W, inj, r.pop("z")), r.pop("grad")
        median = statistics.median
        r.update(
            t_fwd_all=r["t_fwd"],
            t_step_all=r["t_step"],
            t_fwd=median(r["t_fwd"]),
            t_step=median(r["t_step"]),
        )
        r.update(
            regime=regime,
            solver=name,
            framework=fw,
            max_rel_res=float(res.max()),
            converged=bool(res.max() <= 1.1 * cfg.tol),
            grad_err=float(np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)),
            overhead=1.0 - r["nfe"] * t_cell[fw] / r["t_fwd"],
        )
        rows.append(r)
        print(
            f"  ({regime}) {name:40s} nfe={r['nfe']:5d} fwd={1e3 * r['t_fwd']:8.1f}ms"
            f" step={1e3 * r['t_step']:8.1f}ms res={r['max_rel_res']:.1e}"
            f" [{time.perf_counter() - t0:.0f}s]",
            flush=True,
        )
    ok = {r["solver"]: r for r in rows if "error" not in r}
    for r in ok.values():
        for o in OURS if not r["solver"].startswith("jaxdeq") else ():
            if o in ok:
                keys = ("nfe", "t_fwd", "t_step")
                r[f"{o}/peer"] = {k: ok[o][k] / r[k] if r[k] else None for k in keys}
    return rows, t_cell


def check_targets(rows):
    """PASS/FAIL lines. Only converged solvers compete: one that stopped early or
    diverged can be "fast" without having solved anything."""
    if not any(r["solver"].startswith("jaxdeq") for r in rows):
        return ["SKIP: no jaxdeq results, so no targets to check"]
    conv = [r for r in rows if r.get("converged")]
    ran, lines = {r["regime"] for r in rows}, []

    def get(regime, prefix="", ours=None):
        return [
            r
            for r in conv
            if r["regime"] == regime
            and r["solver"].startswith(prefix)
            and (ours is None or r["solver"].startswith("jaxdeq") == ours)
        ]

    def line(passed, text):
        lines.append(f"{'PASS' if passed else 'FAIL'}: {text}")

    if "ii" in ran:
        ours, peers = get("ii", ours=True), get("ii", ours=False)
        plain = next(iter(get("ii", "optx.Fixed")), None)
        if ours and plain:
            best = min(ours, key=lambda r: r["nfe"])
            low = min(peers, key=lambda r: r["nfe"])
            line(
                best["nfe"] <= plain["nfe"] / 3 and best["nfe"] < low["nfe"],
                f"(ii) our best NFE {best['nfe']} ({best['solver']}) <= plain"
                f" iteration {plain['nfe']}/3 = {plain['nfe'] / 3:.0f} and < every"
                f" converged peer (lowest: {low['solver']} {low['nfe']})",
            )
        else:
            line(False, "(ii) NFE target: ours or plain iteration did not converge")
    if "iii" in ran:
        aa = [r for r in get("iii", "jaxdeq.Anderson") if r["solver"] == OURS[0]]
        plains = get("iii", "optx.Fixed") + get("iii", "torchdeq.fixed_point_iter")
        if aa and plains:
            listed = ", ".join(f"{p['solver']} {p['nfe']}" for p in plains)
            line(
                aa[0]["nfe"] <= min(p["nfe"] for p in plains),
                f"(iii) jaxdeq.Anderson NFE {aa[0]['nfe']} <= plain iteration NFE"
                f" ({listed})",
            )
        else:
            line(False, "(iii) Anderson vs plain iteration: one did not converge")
    for regime in sorted({"i", "ii"} & ran):
        ours = get(regime, ours=True)
        if not ours:
            line(False, f"({regime}) step-time targets: none of ours converged")
            continue
        best = min(ours, key=lambda r: r["t_step"])
        for lib, bound in (("torchdeq", 0.5), ("jaxopt", 0.8), ("optx", 0.8)):
            if get(regime, lib):
                peer = min(get(regime, lib), key=lambda r: r["t_step"])
                ratio = best["t_step"] / peer["t_step"]
                line(
                    ratio <= bound,
                    f"({regime}) step time ours {1e3 * best['t_step']:.1f} ms"
                    f" ({best['solver']}) / {lib} best {1e3 * peer['t_step']:.1f} ms"
                    f" ({peer['solver']}) = {ratio:.2f} <= {bound}",
                )
    for r in rows:
        if r["solver"].startswith("jaxdeq") and "error" not in r:
            line(
                r["overhead"] < 0.15,
                f"({r['regime']}) {r['solver']} solver overhead"
                f" {100 * r['overhead']:.0f}% < 15% (NFE {r['nfe']} x cell time vs"
                " forward time)",
            )
    return lines


def finite(v):
    """JSON-safe copy: NaN/inf (a diverged solver) become null."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    return [finite(x) for x in v] if isinstance(v, (list, tuple)) else v


def fmt(v, spec, scale=1.0):
    return "—" if v is None else format(v * scale, spec)


def markdown(rows):
    cols = [
        "regime",
        "solver",
        "max rel res",
        "converged",
        "NFE",
        "bwd",
        "fwd ms",
        "step ms",
        "grad err",
        "fwd MiB",
        "step MiB",
        "overhead",
    ]
    cols += [f"{o.split('.')[1]}/peer NFE · fwd · step" for o in OURS]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            blank = " |" * (len(cols) - 3)
            out.append(
                f"| {r['regime']} | {r['solver']} | crashed: {r['error'][:90]} |"
                + blank
            )
            continue
        conv = "yes" if r["converged"] else "NO"
        if r["says_converged"] != r["converged"]:
            conv += f" (solver says {'yes' if r['says_converged'] else 'no'})"
        bwd = fmt(r["bwd_steps"], ".0f")
        bwd += " (failed)" if r.get("bwd_success", 1) < 1 else ""
        keys = ("nfe", "t_fwd", "t_step")
        ratios = [
            " · ".join(fmt(r[f"{o}/peer"][k], ".2f") for k in keys)
            if f"{o}/peer" in r
            else "—"
            for o in OURS
        ]
        cells = [
            r["regime"],
            r["solver"],
            f"{r['max_rel_res']:.1e}",
            conv,
            r["nfe"],
            bwd,
            f"{1e3 * r['t_fwd']:.1f}",
            f"{1e3 * r['t_step']:.1f}",
            f"{r['grad_err']:.1e}",
            fmt(r["mem_fwd"], ".2f", 2**-20),
            fmt(r["mem_step"], ".2f", 2**-20),
            f"{100 * r['overhead']:.0f}%",
        ]
        out.append("| " + " | ".join(map(str, cells + ratios)) + " |")
    return "\n".join(out)


def versions():
    return _common.versions(
        (
            "jax",
            "jaxlib",
            "optimistix",
            "lineax",
            "equinox",
            "numpy",
            "jaxopt",
            "torch",
            "torchdeq",
            "jaxdeq",
        ),
        jax,
        jaxdeq or None,
    )


def main(cfg):
    if torch:
        torch.set_num_threads(cfg.threads)
        torch.set_num_interop_threads(cfg.threads)
    env, t0 = versions(), time.perf_counter()
    print("versions:", json.dumps(env), flush=True)
    rows, cell_times = [], {}
    for regime in cfg.regimes.split(","):
        print(f"regime ({regime})", flush=True)
        r, cell_times[regime] = run_regime(regime, cfg)
        rows += r
    env.update(loadavg_at_end=os.getloadavg(), wall_s=time.perf_counter() - t0)
    table, targets = markdown(rows), check_targets(rows)
    name = "deq_solvers_quick" if cfg.quick else "deq_solvers"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(cfg).items() if k != "out"}
    record = {
        "config": config,
        "versions": env,
        "cell_time_s": cell_times,
        "rows": rows,
        "targets": targets,
    }
    (out / f"{name}.json").write_text(json.dumps(finite(record), indent=1))
    (out / f"{name}.md").write_text(
        "# DEQ fixed-point solvers\n\nWhat is measured and how: the docstring of"
        f" `benchmarks/deq_solvers.py`.\n\nConfig: `{json.dumps(config)}`; load"
        f" average {env['loadavg_at_start'][0]:.1f} at start,"
        f" {env['loadavg_at_end'][0]:.1f} at end.\n\n{table}\n\n"
        + "\n".join(f"- {t}" for t in targets)
        + "\n"
    )
    print("\n" + table + "\n\n" + "\n".join(targets))


if __name__ == "__main__":
    main(CFG)
