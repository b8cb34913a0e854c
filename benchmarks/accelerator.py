"""jaxdeq at accelerator sizes on whatever device JAX sees: one run, one table per
workload, written to benchmarks/results/accelerator-<device>.{md,json}.

Run it through `bash benchmarks/accelerator.sh` (which picks the Python and forwards
the arguments). The device name is `jax.devices()[0].device_kind`, lower-cased with
every run of other characters replaced by "-" ("NVIDIA H100 80GB HBM3" ->
accelerator-nvidia-h100-80gb-hbm3.md; "cpu" on a CPU). `--quick` (or
JAXDEQ_ACCELERATOR_QUICK=1) runs every workload at tiny sizes, in one process, as a
smoke test on any machine; its files get a "_quick" suffix and are not measurements.

Workloads (sizes of the full mode; dtypes "float32" and "bfloat16", and "tf32" on
request, see below):

1. DEQ. z = tanh(W z + U x + b), the problem of benchmarks/deq_solvers.py in its
   regime (i) (W Gaussian rescaled to spectral norm 0.9; its `make_problem`), batch
   1024, input and hidden 1024, z0 = 0, as a `jaxdeq.DEQ` vmapped over the batch:
   `jaxdeq.Anderson` (memory 5) to rtol 1e-4 (max 200 steps) and
   `jaxdeq.ImplicitAdjoint` whose adjoint system is solved by Anderson to a tenth
   of that (as the deq-digits recipe does), both relative only. In bfloat16 both
   are 1e-2, what bfloat16 resolves. Rows: the forward, and the forward + backward
   of loss = mean(z*^2) w.r.t. (W, U, b).
2. Neural ODE. `jaxdeq.ode.NeuralODE` of a `jaxdeq.ode.ConcatField` (state 64, two
   hidden layers of 1024, tanh) on the batch as one state (benchmarks/
   continuous_node.py's `BatchField`: one step size for all 1024 samples), t in
   [0, 1], `diffrax.Tsit5()`, PID control at rtol = atol = 1e-3, backpropagation
   through the solver (`RecursiveCheckpointAdjoint`); forward + backward of
   sum(y(1)^2) w.r.t. the field. In bfloat16 the field runs in bfloat16 while
   NeuralODE carries the state in float32.
3. Training step. One `jaxdeq.train.make_step` step of the deq-digits recipe (hidden
   1024, Anderson, implicit adjoint, Adam 1e-3) on a batch of 1024 digits (drawn
   with replacement), `precision` "float32" or "bfloat16". Every timed call repeats
   the same step from the same state. In bfloat16 the recipe raises its solvers'
   tolerances to at least 1e-2, absolute ones included, which the tiny cotangents
   of its mean loss meet at once: its backward solves stop after about one step.
4. PINN. `jaxdeq.pinn.fit` of the Merton HJB residual (`jaxdeq.econ.Merton()`, its
   value network of width 256 and depth 3, the residual loss of
   benchmarks/econ_pinn.py) on 65536 fixed collocation points for 500 Adam steps
   (lr 1e-3) in one compiled block, no L-BFGS; float32 only (second derivatives of a
   bfloat16 network are noise). fit caches its compiled block per loss function,
   so the first call compiles and the later ones do not.

Optional peer: TorchDEQ (torchdeq.core.get_deq, Anderson m=5 forward and backward,
relative stopping at the same tolerances, ift=True) on the same DEQ problem on
CUDA, when torch with CUDA and torchdeq are importable; skipped otherwise.

Measured per row. Compile: `jax.jit(fn).lower(...)` (trace + lower) and
`.compile()` wall times, and the first call (PINN: the first fit call minus the
steady one, as fit compiles inside). Run: the median of up to --repeats calls after
the first (fewer once --budget seconds are spent, at least 3 in full mode), each
ended by `jax.block_until_ready` (torch: `torch.cuda.synchronize()`). Throughput:
samples per second (PINN: collocation points x Adam steps per second). XLA memory:
argument + output + temp - aliased bytes of the compiled program
(`compiled.memory_analysis()`; n/a where the backend does not say). Peak device
memory: `device.memory_stats()["peak_bytes_in_use"]` after the row (torch:
`torch.cuda.max_memory_allocated()`); n/a where the backend has no memory stats
(CPU). It is a per-process high-water mark, so in full mode every row runs in its
own process (--isolate, the default there), and in quick mode it is that of the
whole run. Solver statistics: forward steps (max and mean over the batch),
backward steps, and success (every sample's forward solve and, where there is one,
backward solve met its tolerance; a training step also needs a finite update; a
PINN fit a finite loss). A row that did not succeed shows no time or throughput.

Float32 rows run with `jax.default_matmul_precision("highest")`: true float32
matrix products, as torch does by default. On recent NVIDIA GPUs JAX's default is
TF32 (10-bit mantissas), which the DEQ's relative tolerance of 1e-4 is below;
`--dtypes float32,tf32,bfloat16` adds float32 rows at JAX's default precision.

    bash benchmarks/accelerator.sh            # -> benchmarks/results/accelerator-*
    bash benchmarks/accelerator.sh --quick    # tiny sizes, any device: minutes on a CPU
    bash benchmarks/accelerator.sh --workloads deq,node --dtypes bfloat16
"""

import argparse
import contextlib
import datetime
import functools as ft
import importlib
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import versions  # noqa: E402
from continuous_node import BatchField  # noqa: E402

import jaxdeq  # noqa: E402
import jaxdeq.train as jtrain  # noqa: E402
from jaxdeq import econ, pinn  # noqa: E402
from jaxdeq.ode import ConcatField, NeuralODE  # noqa: E402


with contextlib.redirect_stdout(io.StringIO()):  # its notes on missing peers
    import deq_solvers  # noqa: E402

WORKLOADS = ("deq", "node", "train", "pinn")
DTYPES = ("float32", "tf32", "bfloat16")
TITLES = {
    "deq": "DEQ (Anderson forward, implicit adjoint)",
    "node": "Neural ODE (Tsit5, rtol 1e-3, backprop through the solver)",
    "train": "Training step (deq-digits recipe, jaxdeq.train.make_step)",
    "pinn": "PINN (Merton HJB, jaxdeq.pinn.fit, Adam only)",
}
QUICK_ENV = "JAXDEQ_ACCELERATOR_QUICK"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Accelerator benchmark (see docstring).")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes (or {QUICK_ENV})")
    p.add_argument("--out", default=str(HERE / "results"), help="output folder")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="a subset")
    p.add_argument("--dtypes", default="float32,bfloat16", help="of " + str(DTYPES))
    p.add_argument("--batch", type=int, help="DEQ, NODE, training batch (1024)")
    p.add_argument("--hidden", type=int, help="DEQ state, MLP width (1024)")
    p.add_argument("--node-state", type=int, help="neural ODE state size (64)")
    p.add_argument("--pinn-points", type=int, help="collocation points (65536)")
    p.add_argument("--pinn-steps", type=int, help="Adam steps per fit (500)")
    p.add_argument("--repeats", type=int, help="timed calls per row (10)")
    p.add_argument("--budget", type=float, help="seconds of timed calls per row (20)")
    p.add_argument("--case-timeout", type=float, default=900.0, help="s, --isolate")
    p.add_argument("--torch", choices=("auto", "no"), default="auto", help="peer")
    iso = p.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate",
        dest="isolate",
        action="store_true",
        default=None,
        help="each row in its own process (default in full mode)",
    )
    iso.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one row, in a child process
    p.add_argument("--case-out", help=argparse.SUPPRESS)
    p.add_argument("--info-out", help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    cfg.quick = cfg.quick or os.environ.get(QUICK_ENV, "") not in ("", "0")
    full = dict(
        batch=1024,
        hidden=1024,
        node_state=64,
        pinn_points=65536,
        pinn_steps=500,
        repeats=10,
        budget=20.0,
    )
    quick = dict(
        batch=8,
        hidden=16,
        node_state=4,
        pinn_points=64,
        pinn_steps=5,
        repeats=2,
        budget=2.0,
    )
    for name, value in (quick if cfg.quick else full).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    cfg.repeats = max(cfg.repeats, 1)
    cfg.min_repeats = min(1 if cfg.quick else 3, cfg.repeats)
    cfg.pinn_width, cfg.pinn_depth = (8, 2) if cfg.quick else (256, 3)
    cfg.tol, cfg.max_steps, cfg.node_max_steps = 1e-4, 200, 4096
    cfg.isolate = (not cfg.quick) if cfg.isolate is None else cfg.isolate
    cfg.workloads = [w for w in cfg.workloads.split(",") if w]
    cfg.dtypes = [d for d in cfg.dtypes.split(",") if d]
    for name, allowed in (("workloads", WORKLOADS), ("dtypes", DTYPES)):
        bad = sorted(set(getattr(cfg, name)) - set(allowed))
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return cfg


# ----------------------------------------------------------------------- measuring
def storage(dtype):
    return jnp.bfloat16 if dtype == "bfloat16" else jnp.float32


def precision(dtype):
    """The matmul precision of a row: true float32 for "float32", JAX's default for
    "tf32" (TF32 on recent NVIDIA GPUs) and bfloat16 (bfloat16 inputs anyway)."""
    if dtype == "float32":
        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def device_peak():
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def xla_bytes(compiled):
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def steady(call, cfg):
    """Wall times of up to cfg.repeats calls (fewer once cfg.budget is spent)."""
    times = []
    while len(times) < cfg.repeats and (
        len(times) < cfg.min_repeats or sum(times) < cfg.budget
    ):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def run_jitted(fn, args, cfg, dtype):
    """AOT-compile `fn` on `args`, call it once, then time it in steady state."""
    with precision(dtype):
        t0 = time.perf_counter()
        lowered = jax.jit(fn).lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        t3 = time.perf_counter()
    times = steady(lambda: jax.block_until_ready(compiled(*args)), cfg)
    timing = dict(
        trace_s=t1 - t0,
        compile_s=t2 - t1,
        first_call_s=t3 - t2,
        times=times,
        xla_bytes=xla_bytes(compiled),
    )
    return out, timing


def row(workload, variant, dtype, timing, samples, unit, ok, steps, **extra):
    run_s = statistics.median(timing["times"])
    if "peak_bytes" not in extra:
        extra["peak_bytes"] = device_peak()
    return dict(
        workload=workload,
        impl=extra.pop("impl", "jaxdeq"),
        variant=variant,
        dtype=dtype,
        ok=bool(ok),
        steps=steps,
        run_s=run_s,
        throughput=samples / run_s,
        unit=unit,
        **timing,
        **extra,
    )


# ----------------------------------------------------------------------- workloads
def deq_problem(cfg, dtype):
    W, U, b, x = deq_solvers.make_problem("i", cfg.batch, cfg.hidden, cfg.hidden)
    dt = storage(dtype)
    params = tuple(jnp.asarray(a, dt) for a in (W, U, b))
    return params, jnp.asarray(x, dt)


def deq_layer(cfg, dtype):
    # Relative tolerances only: the cotangents of a mean loss are tiny, so an
    # absolute one (as the recipes' bfloat16 policy sets) would end the backward
    # solve at once.
    tol, bwd_tol = (1e-2, 1e-2) if dtype == "bfloat16" else (cfg.tol, 0.1 * cfg.tol)
    solver = jaxdeq.Anderson(rtol=tol, atol=0.0)
    adjoint = jaxdeq.ImplicitAdjoint(
        linear_solver=jaxdeq.Anderson(rtol=bwd_tol, atol=0.0),
        max_steps=cfg.max_steps,
        throw=False,
    )
    y0 = jnp.zeros(cfg.hidden, storage(dtype))
    # deq_solvers' cell, cell(z, (W, inj)), with the (shared) W passed as input.
    return jaxdeq.DEQ(deq_solvers.cell, y0, solver, adjoint, max_steps=cfg.max_steps)


def case_deq(cfg, dtype, backward):
    deq = deq_layer(cfg, dtype)
    params, x = deq_problem(cfg, dtype)
    tol = float(deq.solver.rtol)

    def solve(params, x, probe=None):
        W, U, b = params
        inj = x @ U.T + b
        layer = lambda inj, p: deq((W, inj), backward_stats=p)
        return jax.vmap(layer)(inj, probe)

    if not backward:

        def fn(params, x):
            z, report = solve(params, x)
            return z, report.num_steps, report.successful

        (_, steps, ok), timing = run_jitted(fn, (params, x), cfg, dtype)
        return row(
            "deq",
            "forward",
            dtype,
            timing,
            cfg.batch,
            "samples/s",
            np.all(ok),
            f"fwd {int(np.max(steps))} (mean {np.mean(steps):.1f})",
            tol=tol,
        )

    def loss(params, x, probe):
        z, report = solve(params, x, probe)
        return jnp.mean(z.astype(jnp.float32) ** 2), report

    def fn(params, x, probe):
        grad = jax.value_and_grad(loss, argnums=(0, 2), has_aux=True)
        (value, report), (grads, bstats) = grad(params, x, probe)
        return value, report.num_steps, report.successful, grads, bstats

    probe = jaxdeq.BackwardStats.probe((cfg.batch,))
    out, timing = run_jitted(fn, (params, x, probe), cfg, dtype)
    value, steps, ok, grads, bstats = out
    finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    ok = np.all(ok) and np.all(np.asarray(bstats.success) == 1) and finite
    return row(
        "deq",
        "forward+backward",
        dtype,
        timing,
        cfg.batch,
        "samples/s",
        ok,
        f"fwd {int(np.max(steps))} (mean {np.mean(steps):.1f}), "
        f"bwd {int(np.max(bstats.num_steps))}",
        tol=tol,
        loss=float(value),
    )


def case_node(cfg, dtype):
    dt = storage(dtype)
    kfield, ky = jr.split(jr.PRNGKey(0))
    field = ConcatField(cfg.node_state, 0, cfg.hidden, dtype=dt, key=kfield)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    y0 = jr.normal(ky, (cfg.batch, cfg.node_state), dt)

    def loss(params, y0):
        block = NeuralODE(
            BatchField(eqx.combine(params, static)),
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3),
            max_steps=cfg.node_max_steps,
        )
        y1, report = block(y0)
        return jnp.sum(y1.astype(jnp.float32) ** 2), report

    def fn(params, y0):
        (value, report), grads = jax.value_and_grad(loss, has_aux=True)(params, y0)
        return value, report.num_steps, report.num_fn_evals, report.successful, grads

    out, timing = run_jitted(fn, (params, y0), cfg, dtype)
    value, steps, nfe, ok, grads = out
    finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    return row(
        "node",
        "forward+backward",
        dtype,
        timing,
        cfg.batch,
        "samples/s",
        bool(ok) and finite,
        f"{int(steps)} steps, {int(nfe)} fwd evals",
        loss=float(value),
    )


def case_train(cfg, dtype):
    options = jtrain.DEQDigitsOptions(hidden=cfg.hidden)
    model = jtrain.DEQ_DIGITS.init(jr.PRNGKey(0), options)
    data, _ = jtrain.DEQ_DIGITS.data(options)
    idx = np.random.default_rng(0).integers(0, len(data["x"]), cfg.batch)
    batch = {"x": jnp.asarray(data["x"][idx]), "y": jnp.asarray(data["y"][idx])}
    optimiser = optax.adam(1e-3)
    mode = "bfloat16" if dtype == "bfloat16" else "float32"
    step = jtrain.make_step(jtrain.DEQ_DIGITS, optimiser, mode)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimiser.init(params)

    def fn(params, opt_state, batch, key):
        model = eqx.combine(params, static)
        lr_scale = jnp.asarray(1.0, jnp.float32)
        new, opt_state, _, finite, metrics = step(
            model, opt_state, lr_scale, batch, key
        )
        return eqx.filter(new, eqx.is_inexact_array), opt_state, finite, metrics

    args = (params, opt_state, batch, jr.PRNGKey(1))
    (_, _, finite, metrics), timing = run_jitted(fn, args, cfg, dtype)
    m = {k: float(v) for k, v in metrics.items()}
    ok = bool(finite) and m["successful"] == 1 and m["backward_success"] == 1
    return row(
        "train",
        "step",
        dtype,
        timing,
        cfg.batch,
        "samples/s",
        ok,
        f"fwd {m['num_steps']:.1f}, bwd {m['backward_num_steps']:.1f} (means)",
        loss=m["loss"],
    )


def case_pinn(cfg, dtype):
    model = econ.Merton()
    hjb = model.hjb()
    value = model.value_network(jr.PRNGKey(0), cfg.pinn_width, cfg.pinn_depth)
    points = model.sample(jr.PRNGKey(1), cfg.pinn_points)

    def loss(value, points):
        r = jax.vmap(lambda z: hjb.residual(value, z))(points)
        out = jnp.mean(r**2)
        return out, {"hjb": out}

    def call():
        return pinn.fit(
            loss,
            value,
            lambda key, params: points,
            key=jr.PRNGKey(2),
            adam_steps=cfg.pinn_steps,
            learning_rate=1e-3,
            lbfgs_steps=0,
            log_every=cfg.pinn_steps,
        )

    with precision(dtype):
        t0 = time.perf_counter()
        result = call()  # compiles; fit returns host floats, so it has synchronised
        first = time.perf_counter() - t0
        times = steady(call, cfg)
    timing = dict(
        trace_s=None,
        compile_s=max(first - statistics.median(times), 0.0),
        first_call_s=first,
        times=times,
        xla_bytes=None,
    )
    return row(
        "pinn",
        f"{cfg.pinn_steps} Adam steps",
        dtype,
        timing,
        cfg.pinn_points * cfg.pinn_steps,
        "point-steps/s",
        result.successful and math.isfinite(result.loss),
        f"{result.num_steps} steps, loss {result.loss:.3g}",
        loss=result.loss,
    )


def case_torchdeq(cfg, dtype, backward):
    """TorchDEQ on CUDA on the same problem (see the docstring)."""
    torch = importlib.import_module("torch")
    tcore = importlib.import_module("torchdeq.core")
    tsolver = importlib.import_module("torchdeq.solver")
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    tol = 1e-2 if dtype == "bfloat16" else cfg.tol
    problem = deq_solvers.make_problem("i", cfg.batch, cfg.hidden, cfg.hidden)
    W, U, b, x = (torch.tensor(a, dtype=tdt, device="cuda") for a in problem)
    for p in (W, U, b):
        p.requires_grad_(True)
    anderson = ft.partial(tsolver.get_solver("anderson"), m=5)
    tsolver.register_solver("accelerator_anderson", anderson)
    deq = tcore.get_deq(
        f_solver="accelerator_anderson",
        b_solver="accelerator_anderson",
        f_max_iter=cfg.max_steps,
        b_max_iter=cfg.max_steps,
        f_tol=tol,
        b_tol=tol if dtype == "bfloat16" else 0.1 * tol,
        f_stop_mode="rel",
        b_stop_mode="rel",
        ift=True,
    )
    info = {}

    def solve():
        inj = x @ U.T + b
        z_out, out = deq(lambda z: torch.tanh(z @ W.T + inj), torch.zeros_like(inj))
        info.update(out)
        return z_out[-1]

    def call():
        if backward:
            deq.train()
            for p in (W, U, b):
                p.grad = None
            (solve().float() ** 2).mean().backward()
        else:
            deq.eval()
            with torch.no_grad():
                solve()
        torch.cuda.synchronize()

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = steady(call, cfg)
    rel = torch.as_tensor(info["rel_lowest"]).float()
    nstep = torch.as_tensor(info.get("nstep", float("nan"))).float()
    ok = bool((rel < tol).all())
    if backward:
        grads = torch.cat([p.grad.float().ravel() for p in (W, U, b)])
        ok = ok and bool(torch.isfinite(grads).all())
    timing = dict(
        trace_s=None, compile_s=None, first_call_s=first, times=times, xla_bytes=None
    )
    return row(
        "deq",
        "forward+backward" if backward else "forward",
        dtype,
        timing,
        cfg.batch,
        "samples/s",
        ok,
        f"fwd {nstep.max().item():.0f} (torchdeq nstep)",
        impl="TorchDEQ",
        tol=tol,
        peak_bytes=torch.cuda.max_memory_allocated(),  # JAX's backend left unstarted
    )


def torch_available():
    try:
        torch = importlib.import_module("torch")
        importlib.import_module("torchdeq.core")
        return bool(torch.cuda.is_available()), None
    except Exception as e:  # noqa: BLE001 - any failure means "skip this peer"
        return False, f"{type(e).__name__}: {e}"


def cases(cfg, torch_ok):
    """name -> (workload, run) for every row of this configuration."""
    out = {}
    for dtype in cfg.dtypes:
        if "deq" in cfg.workloads:
            for variant, backward in (("fwd", False), ("fwdbwd", True)):
                run = ft.partial(case_deq, cfg, dtype, backward)
                out[f"deq-{variant}-{dtype}"] = ("deq", run)
                if torch_ok:
                    run = ft.partial(case_torchdeq, cfg, dtype, backward)
                    out[f"torchdeq-{variant}-{dtype}"] = ("deq", run)
        if "node" in cfg.workloads:
            out[f"node-{dtype}"] = ("node", ft.partial(case_node, cfg, dtype))
        if "train" in cfg.workloads:
            out[f"train-{dtype}"] = ("train", ft.partial(case_train, cfg, dtype))
    if "pinn" in cfg.workloads and "float32" in cfg.dtypes:
        out["pinn-float32"] = ("pinn", ft.partial(case_pinn, cfg, "float32"))
    return out


# --------------------------------------------------------------------------- report
def slug(device_kind: str) -> str:
    """A device kind for file names: NVIDIA H100 80GB HBM3 -> nvidia-h100-80gb-hbm3."""
    return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") or "unknown"


def device_info():
    dev = jax.devices()[0]
    kind = dev.device_kind
    return dict(
        device_kind=kind,
        device_slug=slug(kind),
        platform=dev.platform,
        device_count=jax.device_count(),
        memory_stats=dev.memory_stats() is not None,
    )


def _fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def _mib(b):
    return "n/a" if b is None else _num(b / 2**20)


def _num(x):
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def markdown(record) -> str:
    cfg, info, v = record["config"], record["device"], record["versions"]
    mode = (
        "quick (tiny sizes: a smoke test, not a measurement)"
        if cfg["quick"]
        else "full"
    )
    lines = [
        f"# Accelerator benchmark: {info['device_kind']}",
        "",
        f"- device: `{info['device_kind']}` (platform {info['platform']}, "
        f"{info['device_count']} device(s), the first one used)",
        f"- JAX {v.get('jax')}, jaxlib {v.get('jaxlib')}, jaxdeq {v.get('jaxdeq')}",
        f"- date: {record['date']}",
        f"- mode: {mode}; every row in its own process: "
        f"{'yes' if cfg['isolate'] else 'no'}",
        f"- sizes: batch {cfg['batch']}, hidden {cfg['hidden']}, NODE state "
        f"{cfg['node_state']}, PINN {cfg['pinn_points']} points x "
        f"{cfg['pinn_steps']} Adam steps (width {cfg['pinn_width']}, depth "
        f"{cfg['pinn_depth']})",
        f"- TorchDEQ peer: {record['torch']}",
        "",
        "Produced by `bash benchmarks/accelerator.sh` (see benchmarks/accelerator.py "
        "for what is measured). Compile = `.lower()` + `.compile()` seconds (PINN: "
        "first fit minus a steady one); run = median of the timed calls; XLA = the "
        "compiled program's argument + output + temp bytes; peak = the device's "
        "peak bytes in use. A row whose solve failed shows no time or throughput. "
        "float32 = true float32 matmuls; tf32 = JAX's default precision.",
        "",
    ]
    cols = (
        "impl",
        "dtype",
        "variant",
        "solver steps",
        "ok",
        "compile s",
        "first call s",
        "run s (n)",
        "throughput",
        "XLA MiB",
        "peak MiB",
    )
    rows = record["rows"]
    for workload in WORKLOADS:
        these = [r for r in rows if r["workload"] == workload]
        if not these:
            continue
        lines += [f"## {TITLES[workload]}", ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in these:
            if "error" in r:
                err = r["error"].strip().splitlines()[-1][:120].replace("|", "/")
                cells = [r["impl"], r["dtype"], r["variant"], f"error: {err}"]
                cells += [""] * (len(cols) - len(cells))
            else:
                compile_s = None
                if r["compile_s"] is not None:
                    compile_s = r["compile_s"] + (r["trace_s"] or 0.0)
                ok = r["ok"]
                cells = [
                    r["impl"],
                    r["dtype"],
                    r["variant"],
                    r["steps"],
                    "yes" if ok else "**FAILED**",
                    _fmt(compile_s, ".2f"),
                    _fmt(r["first_call_s"], ".3f"),
                    f"{r['run_s']:.4g} ({len(r['times'])})" if ok else "—",
                    f"{_num(r['throughput'])} {r['unit']}" if ok else "—",
                    _mib(r["xla_bytes"]),
                    _mib(r["peak_bytes"]),
                ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
        lines += _ratios(these)
    if record.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in record["notes"]] + [""]
    return "\n".join(lines)


def _ratios(rows):
    """jaxdeq / TorchDEQ run-time ratios of the DEQ rows measured in this run."""
    ours = {(r["variant"], r["dtype"]): r for r in rows if r.get("impl") == "jaxdeq"}
    out = []
    for r in rows:
        if r.get("impl") != "TorchDEQ" or "error" in r or not r["ok"]:
            continue
        mine = ours.get((r["variant"], r["dtype"]))
        if mine and "error" not in mine and mine["ok"]:
            ratio = mine["run_s"] / r["run_s"]
            out.append(
                f"- jaxdeq / TorchDEQ, {r['variant']}, {r['dtype']}: {ratio:.2f}"
            )
    return out + [""] if out else []


def write(record, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if record["config"]["quick"] else ""  # git-ignored
    stem = out_dir / f"accelerator-{record['device']['device_slug']}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    text = markdown(record)
    stem.with_suffix(".md").write_text(text + "\n")
    return stem.with_suffix(".md"), text


# ----------------------------------------------------------------------------- main
PACKAGES = ("jax", "jaxlib", "equinox", "diffrax", "optax", "torch", "torchdeq")


def run_info(cfg):
    """The device, the versions and whether the torch peer can run (this starts
    JAX's backend: in --isolate mode it runs in a child process)."""
    torch_ok, why = False, "--torch no"
    if cfg.torch == "auto":
        torch_ok, why = torch_available()
    return dict(
        device=device_info(),
        versions={**versions(PACKAGES, jax, jaxdeq), "jaxdeq": jaxdeq.__version__},
        torch_ok=torch_ok,
        torch_why=why,
    )


def run_case(name, workload, run):
    try:
        return run()
    except Exception:  # noqa: BLE001 - report the row as an error, keep going
        impl = "TorchDEQ" if name.startswith("torch") else "jaxdeq"
        parts = name.split("-")
        return dict(
            workload=workload,
            impl=impl,
            variant="-".join(parts[1:-1]) or parts[0],
            dtype=parts[-1],
            error=traceback.format_exc(),
        )


def child(argv, extra, timeout=None):
    """Run this script in a fresh process with `extra` arguments; its JSON output."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.json"
        flag = "--info-out" if extra[0] == "info" else "--case-out"
        cmd = [sys.executable, __file__, *argv, *extra[1:], flag, str(path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stderr or b""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            msg = f"{out[-1500:]}\nTimeoutExpired: no result after {timeout:.0f} s"
            return None, subprocess.CompletedProcess(cmd, 124, "", msg)
        if path.exists():
            return json.loads(path.read_text()), proc
        return None, proc


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    jax.config.update("jax_enable_x64", False)  # the dtypes are the rows' own
    if cfg.info_out:
        Path(cfg.info_out).write_text(json.dumps(run_info(cfg), default=str))
        return 0
    if cfg.case:
        workload, run = cases(cfg, torch_ok=True)[cfg.case]
        out = run_case(cfg.case, workload, run)
        Path(cfg.case_out).write_text(json.dumps(out, default=float))
        return 0

    start = time.perf_counter()
    if cfg.isolate:  # this process never starts JAX's backend: no memory held here
        info, proc = child(argv, ["info"])
        if info is None:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
    else:
        info = run_info(cfg)
    if info["torch_ok"]:
        torch_note = "TorchDEQ on CUDA, same problem and tolerances"
    else:
        torch_note = f"not run ({info['torch_why'] or 'torch has no CUDA device'})"
    record = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=info["device"],
        config={
            k: v
            for k, v in vars(cfg).items()
            if k not in ("case", "case_out", "info_out")
        },
        versions=info["versions"],
        torch=torch_note,
        rows=[],
        notes=[],
    )
    out_dir = Path(cfg.out)
    mode = "quick" if cfg.quick else "full"
    print(f"device: {info['device']['device_kind']}; mode: {mode}", flush=True)
    for name, (workload, run) in cases(cfg, info["torch_ok"]).items():
        t0 = time.perf_counter()
        if cfg.isolate:
            r, proc = child(argv, ["case", "--case", name], cfg.case_timeout)
            if r is None:
                r = dict(
                    workload=workload,
                    impl="TorchDEQ" if name.startswith("torch") else "jaxdeq",
                    variant=name,
                    dtype="",
                    error=(proc.stderr or proc.stdout or "no output")[-2000:],
                )
        else:
            r = run_case(name, workload, run)
        r["case"], r["wall_s"] = name, time.perf_counter() - t0
        record["rows"].append(r)
        status = "error" if "error" in r else ("ok" if r["ok"] else "FAILED")
        print(f"  {name}: {status} ({r['wall_s']:.1f} s)", flush=True)
        if "error" in r:
            print(r["error"], file=sys.stderr)
        write(record, out_dir)  # after every row: an interrupted run keeps its rows
    record["total_s"] = time.perf_counter() - start
    path, text = write(record, out_dir)
    print(text)
    print(f"wrote {path} and {path.with_suffix('.json')} in {record['total_s']:.1f} s")
    # A failed optional peer (TorchDEQ has no bfloat16 Anderson, say) is only noted.
    ours = [r for r in record["rows"] if r["impl"] == "jaxdeq"]
    return 1 if any("error" in r for r in ours) else 0


if __name__ == "__main__":
    sys.exit(main())
