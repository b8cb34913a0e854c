"""Heterogeneous-agent general equilibrium: jaxdeq's finite-difference Huggett and
Aiyagari equilibria against Moll's scheme in numpy/scipy.sparse, the grid refinement
of the Huggett r*, and the PINN Huggett equilibrium against the finite-difference r*.

Four parts, one run, float64 throughout, one thread for every library (XLA's
--xla_cpu_multi_thread_eigen=false and OPENBLAS/OMP/MKL_NUM_THREADS=1, set before
numpy and jax are imported):

1. **Speed** (Huggett, 500 points; Aiyagari, 1000 points; Moll's parameters, the
   defaults of `jaxdeq.econ.Huggett` and `Aiyagari`): `jaxdeq.econ.solve_equilibrium`
   with its defaults (pseudo-transient Newton with Delta = 1000 on the implicit upwind
   scheme, block-tridiagonal solves, bracketed Newton on r with S'(r) from an implicit
   forward-mode derivative) against the peer, the standard approach in the field
   written here from the equations of Achdou et al. (2022) with numpy and
   scipy.sparse: the same upwind scheme, one `scipy.sparse.linalg.spsolve` of
   (1/Delta + rho - A) V = u(c) + V/Delta per HJB iteration (Delta = 1000, the HJB
   warm-started from the previous r as in Moll's codes), the KFE by solving A^T g = 0
   with one row replaced by g_1 = 0.1, then normalised, and bisection on r inside the
   same bracket. Both stop the HJB iteration at max|V_{n+1} - V_n| <= 1e-12 max|V|;
   the peer bisects until |S(r)| <= 1e-10 and jaxdeq runs with its defaults (Newton
   step below 1e-12 |r|); the |S| each reached is reported. Times are medians of
   interleaved repeats after a warm-up call (jaxdeq's compilation reported
   separately); ratio = jaxdeq / peer.
2. **Gradient** dr*/drho: `jax.grad` through `solve_equilibrium` (implicit function
   theorem; jitted, timed after a warm-up) against a central finite difference with
   step 1e-4 (two more equilibria), by jaxdeq and by the peer.
3. **Grid refinement** of the Huggett r*: grid sizes 250 to 8000 (jaxdeq and the
   peer), the change from the previous size, the observed order
   log2(dr_{n/2} / dr_n), times, and the Richardson limit 2 r_n - r_{n/2} (first
   order) and r_n + dr_n / (2^p - 1) (observed order p) from the two finest grids.
4. **PINN**: `jaxdeq.econ.solve_equilibrium(Huggett(), PINNHousehold())` with the
   solver's defaults (on the bracket [0.025, 0.045] from r0 = 0.03), its r* against
   the finite-difference r* on the finest grid and against the Richardson limit; the
   target is |r_PINN - r_FD| <= 1e-4.

Memory: the peak resident memory of a fresh process that solves one equilibrium
(imports, compilation and all), and the rise of the peak above the resident memory
during a second solve (the high-water mark reset through /proc/self/clear_refs); for
jaxdeq also XLA's memory analysis of the compiled equilibrium (temporaries and
outputs).

    python benchmarks/econ_ge.py           # -> benchmarks/results/econ_ge.{json,md}
    python benchmarks/econ_ge.py --quick   # smoke test: no PINN, grids to 1000
                                           # (-> econ_ge_quick.{json,md})
    python benchmarks/econ_ge.py --pinn-only   # the PINN again, against the FD
                                               # references of the last full run
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time


HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
).strip()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402


sys.path.insert(0, str(HERE))
from _common import versions  # noqa: E402

import jaxdeq  # noqa: E402
from jaxdeq import econ  # noqa: E402


S_TOL = 1e-10  # the peer's bisection stops at |S(r)| <= S_TOL
HJB_RTOL = 1e-12  # both: stop at max|V_{n+1} - V_n| <= HJB_RTOL max|V|
DELTA = 1000.0
FD_STEP = 1e-4  # central finite difference in rho

ECONOMIES = {
    "huggett": lambda n=500: econ.Huggett(grid_size=n),
    "aiyagari": lambda n=1000: econ.Aiyagari(grid_size=n),
}


# --------------------------------------------------------------------------------
# The peer: Moll's implicit upwind scheme with a sparse direct solver, bisection on r


class MollFD:
    """The implicit upwind finite-difference scheme of Achdou et al. (2022) for a
    household with CRRA utility and two-state Poisson income, in numpy and
    scipy.sparse, and the stationary equilibrium by bisection on r.

    Unknowns are stacked by income state: index j * n + i for wealth point i.
    """

    def __init__(self, *, gamma, rho, z, lam, a_min, a_max, n, firm=None):
        self.gamma, self.rho = float(gamma), float(rho)
        self.z = np.asarray(z, float)
        self.lam = np.asarray(lam, float)
        self.n = int(n)
        self.a = np.linspace(float(a_min), float(a_max), self.n)
        self.da = self.a[1] - self.a[0]
        self.firm = firm  # None (Huggett) or (alpha, delta, A): Aiyagari

    @classmethod
    def like(cls, economy):
        """The same economy as a jaxdeq `Huggett` or `Aiyagari`."""
        firm = None
        if isinstance(economy, econ.Aiyagari):
            firm = tuple(
                float(x) for x in (economy.alpha, economy.delta, economy.productivity)
            )
        return cls(
            gamma=economy.gamma,
            rho=economy.rho,
            z=economy.z,
            lam=economy.lam,
            a_min=economy.a_min,
            a_max=economy.a_max,
            n=economy.grid_size,
            firm=firm,
        )

    # the firm (Aiyagari): K/L = (alpha A / (r + delta))^(1 / (1 - alpha))
    def labour(self):
        l1, l2 = self.lam
        return (l2 * self.z[0] + l1 * self.z[1]) / (l1 + l2)

    def capital_per_worker(self, r):
        alpha, delta, A = self.firm
        return (alpha * A / (r + delta)) ** (1 / (1 - alpha))

    def wage(self, r):
        if self.firm is None:
            return 1.0
        alpha, _, A = self.firm
        return (1 - alpha) * A * self.capital_per_worker(r) ** alpha

    def capital_demand(self, r):
        return 0.0 if self.firm is None else self.capital_per_worker(r) * self.labour()

    def u(self, c):
        return c ** (1 - self.gamma) / (1 - self.gamma)

    def upwind(self, v, y):
        """Consumption and the up/down rates of the upwind scheme; v, y are (2, n)."""
        g = self.gamma
        edge = y ** (-g)  # u'(y): zero drift at the ends (state constraints)
        diff = (v[:, 1:] - v[:, :-1]) / self.da
        floor = 1e-8 * edge.min()
        dvf = np.maximum(np.concatenate([diff, edge[:, -1:]], axis=1), floor)
        dvb = np.maximum(np.concatenate([edge[:, :1], diff], axis=1), floor)
        sf = y - dvf ** (-1 / g)
        sb = y - dvb ** (-1 / g)
        fwd = sf > 0
        bwd = (sb < 0) & ~fwd
        s = np.where(fwd, sf, np.where(bwd, sb, 0.0))
        up = np.where(fwd, sf, 0.0) / self.da
        down = np.where(bwd, -sb, 0.0) / self.da
        return y - s, up.ravel(), down.ravel()

    def generator_diagonals(self, up, down):
        """Diagonals of A at offsets 0, -1, +1, -n, +n."""
        n = self.n
        l1, l2 = self.lam
        switch = np.concatenate([np.full(n, l1), np.full(n, l2)])
        return (
            -(up + down) - switch,
            down[1:],  # A[k, k-1]: one grid point down (zero across the states)
            up[:-1],  # A[k, k+1]
            np.full(n, l2),  # A[n + i, i]: state 2 -> state 1
            np.full(n, l1),  # A[i, n + i]: state 1 -> state 2
        )

    def household(self, r, v0=None, max_iter=500):
        n = self.n
        w = self.wage(r)
        y = w * self.z[:, None] + r * self.a[None, :]
        v = self.u(y) / self.rho if v0 is None else v0
        offsets = (0, -1, 1, -n, n)
        steps = 0
        while steps < max_iter:
            steps += 1
            c, up, down = self.upwind(v, y)
            d0, lo, hi, sw_lo, sw_hi = self.generator_diagonals(up, down)
            B = sp.diags(
                [1 / DELTA + self.rho - d0, -lo, -hi, -sw_lo, -sw_hi],
                offsets,
                format="csc",
            )
            rhs = self.u(c).ravel() + v.ravel() / DELTA
            new = spla.spsolve(B, rhs).reshape(2, n)
            change = np.max(np.abs(new - v))
            v = new
            if change <= HJB_RTOL * np.max(np.abs(v)):
                break
        # the KFE: A^T g = 0, with row 1 replaced by g_1 = 0.1, then normalised
        c, up, down = self.upwind(v, y)
        d0, lo, hi, sw_lo, sw_hi = self.generator_diagonals(up, down)
        hi_t = lo.copy()  # A^T[k, k+1] = A[k+1, k]
        sw_hi_t = sw_lo.copy()  # A^T[i, n + i] = A[n + i, i]
        d0 = d0.copy()
        d0[0], hi_t[0], sw_hi_t[0] = 1.0, 0.0, 0.0
        AT = sp.diags([d0, hi, hi_t, sw_hi, sw_hi_t], offsets, format="csc")
        rhs = np.zeros(2 * n)
        rhs[0] = 0.1
        g = spla.spsolve(AT, rhs)
        g = (g / (g.sum() * self.da)).reshape(2, n)
        assets = float(np.sum(g * self.a[None, :]) * self.da)
        return {"v": v, "c": c, "g": g, "assets": assets, "steps": steps}

    def excess_supply(self, r, solution):
        return solution["assets"] - self.capital_demand(r)

    def equilibrium(self, bracket, tol=S_TOL, max_iter=200):
        """Bisection on r until |S(r)| <= tol, warm-starting each HJB solve."""
        lo, hi = (float(x) for x in bracket)
        v = None
        hjb_steps = it = 0
        while it < max_iter:
            it += 1
            r = 0.5 * (lo + hi)
            sol = self.household(r, v0=v)
            v = sol["v"]
            hjb_steps += sol["steps"]
            S = self.excess_supply(r, sol)
            if abs(S) <= tol or hi - lo <= 1e-15:
                break
            if S > 0:
                hi = r
            else:
                lo = r
        return {"r": r, "excess_supply": S, "steps": it, "hjb_steps": hjb_steps}


# --------------------------------------------------------------------------------
# helpers


def _bracket(economy):
    return tuple(float(x) for x in economy.bracket())


def _jax_equilibrium(economy):
    sol = econ.solve_equilibrium(economy)
    return jax.block_until_ready(sol)


def _clock(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _interleaved(fns, repeats):
    """Median time of each fn over `repeats` interleaved rounds."""
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, outs[k] = _clock(fn)
            times[k].append(t)
    return {k: float(np.median(v)) for k, v in times.items()}, times, outs


def _row(sol):
    return {
        "r": float(sol.r),
        "excess_supply": float(sol.excess_supply),
        "steps": int(sol.steps),
        "household_steps": int(sol.household.steps),
        "hjb_residual": float(sol.household.hjb_residual),
        "kfe_residual": float(sol.household.kfe_residual),
        "aggregates": {k: float(v) for k, v in sol.aggregates.items()},
    }


# --------------------------------------------------------------------------------
# 1. speed


def speed(name, repeats):
    economy = ECONOMIES[name]()
    peer = MollFD.like(economy)
    bracket = _bracket(economy)
    first, sol = _clock(lambda: _jax_equilibrium(economy))
    times, raw, outs = _interleaved(
        {
            "jaxdeq": lambda: _jax_equilibrium(economy),
            "peer": lambda: peer.equilibrium(bracket),
        },
        repeats,
    )
    sol, theirs = outs["jaxdeq"], outs["peer"]
    row = {
        "economy": name,
        "grid_size": economy.grid_size,
        "bracket": bracket,
        "jaxdeq": _row(sol),
        "peer": theirs,
        "jaxdeq_first_call_s": first,
        "jaxdeq_compile_s": first - times["jaxdeq"],
        "jaxdeq_s": times["jaxdeq"],
        "peer_s": times["peer"],
        "ratio": times["jaxdeq"] / times["peer"],
        "times": raw,
        "r_difference": abs(float(sol.r) - theirs["r"]),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    return row


# --------------------------------------------------------------------------------
# 2. gradient


def gradient(name, repeats):
    economy = ECONOMIES[name]()

    def r_star(rho, economy):
        return econ.solve_equilibrium(eqx.tree_at(lambda e: e.rho, economy, rho)).r

    grad = eqx.filter_jit(jax.grad(r_star))
    rho = economy.rho
    first, _ = _clock(lambda: jax.block_until_ready(grad(rho, economy)))

    def ours_fd():
        up = _jax_equilibrium(eqx.tree_at(lambda e: e.rho, economy, rho + FD_STEP))
        dn = _jax_equilibrium(eqx.tree_at(lambda e: e.rho, economy, rho - FD_STEP))
        return (float(up.r) - float(dn.r)) / (2 * FD_STEP)

    def peer_fd():
        out = []
        for sign in (1, -1):
            shifted = eqx.tree_at(lambda e: e.rho, economy, rho + sign * FD_STEP)
            eq = MollFD.like(shifted).equilibrium(_bracket(shifted))
            out.append(eq["r"])
        return (out[0] - out[1]) / (2 * FD_STEP)

    ours_fd()  # the shifted economies have the same structure: no recompilation
    times, raw, outs = _interleaved(
        {
            "jaxdeq_implicit": lambda: float(jax.block_until_ready(grad(rho, economy))),
            "jaxdeq_fd": ours_fd,
            "peer_fd": peer_fd,
        },
        repeats,
    )
    row = {
        "economy": name,
        "grid_size": economy.grid_size,
        "fd_step": FD_STEP,
        "dr_drho": outs,
        "times_s": times,
        "jaxdeq_grad_first_call_s": first,
        "ratio_implicit_over_peer_fd": times["jaxdeq_implicit"] / times["peer_fd"],
        "times": raw,
    }
    print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    return row


# --------------------------------------------------------------------------------
# 3. grid refinement


def _refine_one(n, repeats):
    economy = ECONOMIES["huggett"](n)
    peer = MollFD.like(economy)
    bracket = _bracket(economy)
    first, _ = _clock(lambda: _jax_equilibrium(economy))
    times, _, outs = _interleaved(
        {
            "jaxdeq": lambda: _jax_equilibrium(economy),
            "peer": lambda: peer.equilibrium(bracket),
        },
        repeats,
    )
    compile_s = first - times["jaxdeq"]
    return {
        "grid_size": n,
        "source": "jaxdeq",
        "r": float(outs["jaxdeq"].r),
        "excess_supply": float(outs["jaxdeq"].excess_supply),
        "r_peer": outs["peer"]["r"],
        "jaxdeq_first_call_s": first,
        # below a second: compiled already (the speed section's grid)
        "jaxdeq_compile_s": compile_s if compile_s > 1.0 else None,
        "jaxdeq_s": times["jaxdeq"],
        "peer_s": times["peer"],
        "ratio": times["jaxdeq"] / times["peer"],
        "repeats": repeats,
    }


def _refine_peer_only(n):
    economy = ECONOMIES["huggett"](n)
    t, eq = _clock(lambda: MollFD.like(economy).equilibrium(_bracket(economy)))
    return {
        "grid_size": n,
        "source": "peer",
        "r": eq["r"],
        "r_peer": eq["r"],
        "excess_supply": eq["excess_supply"],
        "peer_s": t,
        "repeats": 1,
    }


def _richardson(coarse, fine):
    out = {
        "from_grids": [coarse["grid_size"], fine["grid_size"]],
        "source": fine["source"],
        "first_order": 2 * fine["r"] - coarse["r"],
    }
    if "order" in fine:
        p = fine["order"]
        out["observed_order"] = p
        out["at_observed_order"] = fine["r"] + fine["change"] / (2**p - 1)
    return out


def refinement(sizes, peer_sizes, repeats_small, repeats_large):
    rows = []
    for n in [*sizes, *peer_sizes]:
        if n in sizes:
            row = _refine_one(n, repeats_small if n <= 1000 else repeats_large)
        else:
            row = _refine_peer_only(n)
        if rows:
            row["change"] = row["r"] - rows[-1]["r"]
            if len(rows) > 1:
                row["order"] = float(np.log2(abs(rows[-1]["change"] / row["change"])))
        rows.append(row)
        print(json.dumps(row), flush=True)
    ours = [x for x in rows if x["source"] == "jaxdeq"]
    out = {"rows": rows, "richardson": _richardson(rows[-2], rows[-1])}
    if ours[-1] is not rows[-1]:
        out["richardson_jaxdeq"] = _richardson(ours[-2], ours[-1])
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}), flush=True)
    return out


# --------------------------------------------------------------------------------
# 4. PINN


def pinn(reference):
    start = time.perf_counter()

    def show(info):
        if info.get("stage") == "clearing":
            r, excess = info["r"], info["excess_supply"]
            print(f"PINN clearing: r = {r:.7f}, S = {excess:.3e}", flush=True)

    sol = econ.solve_equilibrium(
        econ.Huggett(),
        econ.PINNHousehold(),
        r0=0.03,
        bracket=(0.025, 0.045),
        key=jax.random.PRNGKey(0),
        progress=show,
        throw=False,
    )
    wall = time.perf_counter() - start
    r = float(sol.r)
    rows = reference["rows"]
    ours = [x for x in rows if x["source"] == "jaxdeq"]
    fd = {}
    if any(x["grid_size"] == 500 for x in rows):
        fd["FD, 500 points (Moll's grid)"] = next(
            x["r"] for x in rows if x["grid_size"] == 500
        )
    fd[f"FD (jaxdeq), {ours[-1]['grid_size']} points"] = ours[-1]["r"]
    if rows[-1] is not ours[-1]:
        fd[f"FD (peer), {rows[-1]['grid_size']} points"] = rows[-1]["r"]
    limits = [reference.get("richardson_jaxdeq"), reference["richardson"]]
    for rich in filter(None, limits):
        g = rich["from_grids"]
        fd[f"FD, Richardson limit from {g[0]} and {g[1]} points"] = rich["first_order"]
    target = 1e-4
    row = {
        "r": r,
        "excess_supply": float(sol.excess_supply),
        "wall_time_s": wall,
        "reported_wall_time_s": float(sol.wall_time),
        "clearing": [[float(a), float(b)] for a, b in sol.clearing],
        "root_finding_steps": int(sol.steps),
        "result": str(sol.result),
        "terms": {k: float(v) for k, v in sol.terms.items()},
        "mass_at_limit": [float(x) for x in sol.mass],
        "target": target,
        "against": [
            {"reference": k, "r": v, "error": abs(r - v), "met": abs(r - v) <= target}
            for k, v in fd.items()
        ],
    }
    # the PINN solves the continuous problem: the grid-converged r* is the reference
    row["target_met"] = row["against"][-1]["met"]
    print(json.dumps(row), flush=True)
    return row


# --------------------------------------------------------------------------------
# memory, each in a fresh process


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rise(fn):
    """Run fn; the rise of the resident high-water mark above the resident memory
    before the call, in MiB (None where /proc/self/clear_refs is missing)."""
    reset = _reset_peak()
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before if reset else None


def memory_child(library, name):
    economy = ECONOMIES[name]()
    if library == "jaxdeq":
        solve = lambda: _jax_equilibrium(economy)  # noqa: E731
    else:
        peer = MollFD.like(economy)
        solve = lambda: peer.equilibrium(_bracket(economy))  # noqa: E731
    imports_peak = _status("VmHWM")
    out = {"rss_after_imports_mib": _status("VmRSS")}
    out["first_solve_rise_mib"] = _peak_rise(solve)  # jaxdeq: with compilation
    out["second_solve_rise_mib"] = _peak_rise(solve)
    if out["first_solve_rise_mib"] is not None:  # the peak from the imports on
        out["peak_rss_mib"] = max(
            imports_peak, out["rss_after_imports_mib"] + out["first_solve_rise_mib"]
        )
    if library == "jaxdeq":
        dynamic, static = eqx.partition(economy, eqx.is_array)

        def arrays(dynamic):
            sol = econ.solve_equilibrium(eqx.combine(dynamic, static))
            return eqx.filter(sol, eqx.is_array)

        m = jax.jit(arrays).lower(dynamic).compile().memory_analysis()
        if m is not None:
            out["xla_temp_and_output_mib"] = (
                m.temp_size_in_bytes + m.output_size_in_bytes
            ) / 2**20
    print("MEMORY " + json.dumps(out), flush=True)


def memory(name):
    out = {}
    for library in ("jaxdeq", "peer"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", library, name],
            capture_output=True,
            text=True,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")]
        if proc.returncode != 0 or not line:
            out[library] = {"error": (proc.stderr or proc.stdout)[-2000:]}
        else:
            out[library] = json.loads(line[-1][len("MEMORY ") :])
    print(json.dumps({name: out}), flush=True)
    return out


# --------------------------------------------------------------------------------
# report


def _e(x):
    return f"{x:.1e}"


def markdown(out):
    v = out["versions"]
    lines = [
        "# Heterogeneous-agent general equilibrium: jaxdeq against Moll's scheme "
        "in scipy",
        "",
        f"Machine: {v['platform']}, {v['cpu_count']} cores, load average at start "
        f"{', '.join(f'{x:.1f}' for x in v['loadavg_at_start'])}; one thread per "
        "library, float64. Peer: the implicit upwind scheme (Delta = 1000) with "
        "`scipy.sparse.linalg.spsolve` per HJB iteration, the KFE by the transposed "
        "generator with one row fixed, bisection on r to |S| <= "
        f"{S_TOL:.0e}. Both stop the HJB iteration at max|dV| <= {HJB_RTOL:.0e} "
        "max|V|. Times: medians of interleaved repeats after a warm-up; ratio = "
        "jaxdeq / peer (below 1: jaxdeq faster).",
        "",
        "## Equilibrium (Moll's parameters)",
        "",
        "| economy | grid | r* jaxdeq | r* peer | abs(S) jaxdeq / peer | steps jaxdeq "
        "(Newton / HJB) | steps peer (bisection / HJB) | jaxdeq | compile | peer "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in out["speed"]:
        j, p = row["jaxdeq"], row["peer"]
        lines.append(
            f"| {row['economy']} | {row['grid_size']} | {j['r']:.8f} | {p['r']:.8f} "
            f"| {_e(abs(j['excess_supply']))} / {_e(abs(p['excess_supply']))} | "
            f"{j['steps']} / {j['household_steps']} (last r) | {p['steps']} / "
            f"{p['hjb_steps']} | {row['jaxdeq_s']:.3f} s | "
            f"{row['jaxdeq_compile_s']:.1f} s | {row['peer_s']:.3f} s | "
            f"**{row['ratio']:.2f}** |"
        )
    aiy = next((r for r in out["speed"] if r["economy"] == "aiyagari"), None)
    if aiy is not None:
        a = aiy["jaxdeq"]["aggregates"]
        lines += [
            "",
            f"Aiyagari aggregates (jaxdeq): K = {a['capital']:.5f}, Y = "
            f"{a['output']:.5f}, K/Y = {a['capital_output_ratio']:.4f}, w = "
            f"{a['w']:.5f}.",
        ]
    if out.get("memory"):
        lines += [
            "",
            "## Memory (one equilibrium, a fresh process each)",
            "",
            "| economy | library | resident after imports | rise of the peak, "
            "first solve (jaxdeq: with compilation) | rise of the peak, second solve "
            "| XLA temporaries + outputs |",
            "|---|---|---|---|---|---|",
        ]

        def mib(x):
            return "n/a" if x is None else f"{x:.1f} MiB"

        for name, libs in out["memory"].items():
            for lib, m in libs.items():
                if "error" in m:
                    lines.append(f"| {name} | {lib} | failed | | | |")
                    continue
                xla = m.get("xla_temp_and_output_mib")
                lines.append(
                    f"| {name} | {lib} | {m['rss_after_imports_mib']:.0f} MiB | "
                    f"{mib(m['first_solve_rise_mib'])} | "
                    f"{mib(m['second_solve_rise_mib'])} | "
                    f"{'' if xla is None else f'{xla:.2f} MiB'} |"
                )
    if out.get("gradient"):
        lines += [
            "",
            f"## dr*/drho: implicit gradient against central differences (step "
            f"{FD_STEP:.0e})",
            "",
            "| economy | grid | jaxdeq implicit | jaxdeq central difference | peer "
            "central difference | time implicit | time jaxdeq FD | time peer FD | "
            "ratio implicit / peer FD |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in out["gradient"]:
            d, t = row["dr_drho"], row["times_s"]
            lines.append(
                f"| {row['economy']} | {row['grid_size']} | "
                f"{d['jaxdeq_implicit']:.6f} | {d['jaxdeq_fd']:.6f} | "
                f"{d['peer_fd']:.6f} | {t['jaxdeq_implicit']:.3f} s | "
                f"{t['jaxdeq_fd']:.3f} s | {t['peer_fd']:.3f} s | "
                f"**{row['ratio_implicit_over_peer_fd']:.2f}** |"
            )
    ref = out["refinement"]
    lines += [
        "",
        "## Grid refinement of the Huggett r* (the peer's r* agrees with jaxdeq's to "
        "1e-11; rows without a jaxdeq time: the peer alone)",
        "",
        "| grid | r* | change | observed order | jaxdeq | jaxdeq compile | peer | "
        "ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ref["rows"]:
        change = f"{row['change']:+.2e}" if "change" in row else ""
        order = f"{row['order']:.2f}" if "order" in row else ""
        if row["source"] == "jaxdeq":
            c = row["jaxdeq_compile_s"]
            ours = (
                f"{row['jaxdeq_s']:.3f} s | "
                f"{'cached' if c is None else f'{c:.0f} s'} | "
                f"{row['peer_s']:.3f} s | {row['ratio']:.2f}"
            )
        else:
            ours = f" | | {row['peer_s']:.1f} s (once) | "
        lines.append(
            f"| {row['grid_size']} | {row['r']:.7f} | {change} | {order} | {ours} |"
        )
    lines.append("")
    for key in ("richardson_jaxdeq", "richardson"):
        rich = ref.get(key)
        if rich is None:
            continue
        text = (
            f"Richardson limit from grids {rich['from_grids'][0]} and "
            f"{rich['from_grids'][1]} ({rich['source']}): "
            f"**{rich['first_order']:.6f}** (first order)"
        )
        if "at_observed_order" in rich:
            text += (
                f", {rich['at_observed_order']:.6f} (observed order "
                f"{rich['observed_order']:.2f})"
            )
        lines.append(f"- {text}.")
    if out.get("pinn"):
        p = out["pinn"]
        lines += [
            "",
            "## PINN Huggett equilibrium (`PINNHousehold()`, defaults)",
            "",
            f"r* = {p['r']:.6f}, abs(S) = {_e(abs(p['excess_supply']))}, "
            f"{p['wall_time_s']:.0f} s (compilation included). Target: within "
            f"{p['target']:.0e} of the finite-difference r*.",
            "",
            "Solves of the root finder (r, S(r)): "
            + ", ".join(f"({a:.6f}, {_e(b)})" for a, b in p["clearing"])
            + ".",
            "",
            "| reference | FD r* | abs(r*_PINN - r*_FD) | within the target |",
            "|---|---|---|---|",
        ]
        for x in p["against"]:
            lines.append(
                f"| {x['reference']} | {x['r']:.6f} | {_e(x['error'])} | "
                f"{'yes' if x['met'] else '**no**'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="no PINN, grids to 1000")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument(
        "--peer-sizes",
        type=int,
        nargs="*",
        default=None,
        help="finer grids solved by the peer only (default 16000 32000; quick none)",
    )
    ap.add_argument("--skip-pinn", action="store_true")
    ap.add_argument(
        "--pinn-only",
        action="store_true",
        help="rerun the PINN alone against the finite-difference references of the "
        "last full run (in benchmarks/results/econ_ge.json)",
    )
    ap.add_argument("--memory-child", nargs=2, metavar=("LIBRARY", "ECONOMY"))
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    if args.pinn_only:
        out = json.loads((RESULTS / "econ_ge.json").read_text())
        out["pinn"] = pinn(out["refinement"])
        out["pinn"]["versions"] = versions(["jax", "equinox"], jax, jaxdeq)
        (RESULTS / "econ_ge.json").write_text(json.dumps(out, indent=1, default=str))
        (RESULTS / "econ_ge.md").write_text(markdown(out))
        print(markdown(out))
        return
    repeats = args.repeats or (3 if args.quick else 7)
    sizes = args.sizes or (
        [250, 500, 1000] if args.quick else [250, 500, 1000, 2000, 4000, 8000]
    )
    peer_sizes = args.peer_sizes
    if peer_sizes is None:
        peer_sizes = [] if args.quick else [16000, 32000]
    out = {
        "versions": versions(["jax", "equinox", "numpy", "scipy"], jax, jaxdeq),
        "settings": {
            "s_tol_peer": S_TOL,
            "hjb_rtol": HJB_RTOL,
            "delta": DELTA,
            "repeats": repeats,
            "sizes": sizes,
            "peer_sizes": peer_sizes,
            "quick": args.quick,
        },
    }
    out["speed"] = [speed(name, repeats) for name in ECONOMIES]
    out["memory"] = {name: memory(name) for name in ECONOMIES}
    out["gradient"] = [gradient(name, max(3, repeats // 2)) for name in ECONOMIES]
    out["refinement"] = refinement(sizes, peer_sizes, repeats, 1 if args.quick else 3)
    if not (args.quick or args.skip_pinn):
        out["pinn"] = pinn(out["refinement"])
    stem = "econ_ge_quick" if args.quick else "econ_ge"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str))
    (RESULTS / f"{stem}.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
