"""Section "node" of benchmarks/continuous.py: jaxdeq's NeuralODE against torchdiffeq.

Model. An MLP vector field f(t, y) = MLP([y; t]) (`jaxdeq.ode.ConcatField` with
input_size 0; state --node-state (64), two hidden layers of --node-width (128),
tanh; equinox's default initialisation, seed --seed), float32; the same weights are
copied into a torch module (three torch.nn.Linear, tanh) that maps a (batch, state)
tensor. y0 ~ N(0, I), batch --node-batch (128), t in [0, 1]. Solver: torchdiffeq
`odeint(method="dopri5")` against `diffrax.Dopri5()` (the same Dormand-Prince 5(4)
tableau) with `diffrax.PIDController`, rtol = atol in --node-tols (1e-3, 1e-6). Both
controllers divide the error estimate by atol + rtol max(|y0|, |y1|), take the RMS
norm over the whole state and use safety 0.9 and step factors in [0.2, 10]. Each
side keeps its own first step (torchdiffeq: Hairer's selection, one extra
evaluation; diffrax 0.7: 0.01 for ODEs, see `jaxdeq.ode.NeuralODE`), and torchdiffeq
steps past t = 1 and interpolates back where diffrax clips its last step, so the step
counts can differ by one or two: the NFE columns show it.

Rows. torchdiffeq solves the whole batch as ONE ODE with one step size, so ours runs
the same way ("batch as one ODE": `NeuralODE` on the (batch, state) array, with a
vector field that vmaps the ConcatField over the batch: the identical algorithm), and
also per sample under `jax.vmap` ("vmap": each sample its own step sizes; the batched
loop runs until its slowest sample stops). Backward modes in pairs: backprop through
the solver (torch autograd through `odeint`;
`diffrax.RecursiveCheckpointAdjoint(checkpoints=32)`, NeuralODE's default) and the
continuous adjoint (torchdiffeq `odeint_adjoint` with its default adjoint tolerances
and norm; `diffrax.BacksolveAdjoint()` with the same
solver and controller on the augmented state).

Measured. Forward time (torch under no_grad; JAX an AOT-compiled forward,
`jax.jit(fn).lower(...).compile()`) and forward + backward time (loss = sum of
y(1)^2; torch: loss.backward(), parameter grads cleared before each call; JAX: a
compiled `jax.value_and_grad` w.r.t. the vector field's parameters). The tolerance
is a traced argument of the JAX functions, so one compilation serves every
tolerance; compile time is excluded (in the JSON). Times are medians over rounds
after one warm-up call each: per tolerance and column, every row's function is timed
round-robin in rotating order (--node-rounds rounds, fewer once --node-budget
seconds are spent, at least 3) so that load changes on a shared machine hit all rows
alike; JAX outputs block_until_ready. Ratios: ours / torchdiffeq from the same
rounds. NFE: torch = calls of the module's forward (during the forward, and
separately during loss.backward()); ours forward = `report.num_fn_evals` (vmap: mean
over samples, max in the JSON); ours backward = calls seen by a `jax.debug.callback`
in a copy of the vector field during one jitted value_and_grad, minus the forward's
`report.num_fn_evals` (under vmap the callback fires once per sample per batched
evaluation; the count divided by the batch, minus the largest `num_fn_evals`, is what
the batched loop executes). diffrax's checkpointed backward evaluates each
Runge-Kutta stage twice (its stage loop is itself checkpointed), so it counts about
twice the forward evaluations. End states: max |y1_ours - y1_torch| and the max abs
error of each against a float64 reference (torchdiffeq dopri5 at rtol = atol = 1e-10
on a float64 copy). Gradients: max |g_ours - g_torch| / max |g_torch| over all
parameters, against torch's gradient of the same backward mode. Memory: JAX = XLA
compiled memory analysis of the forward + backward (temp bytes); torch = peak net
CPU-allocator bytes of one forward + backward from the torch profiler.

Wrapper overhead. `NeuralODE` against `diffrax.diffeqsolve` called directly with the
same term, solver, controller, adjoint, saveat (t1), max_steps (4096) and throw
(False), both compiled the same way, timed interleaved in pairs (rotating order) for
--overhead-rounds rounds (fewer once --overhead-budget seconds are spent); reported
as the median of the paired ratios t_NeuralODE / t_diffeqsolve with its
interquartile range. (NeuralODE also evaluates f(t0, y0) itself and hands it to
Dopri5 as its first-same-as-last stage, which diffrax would otherwise evaluate in
`solver.init`: the same work.) Not for BacksolveAdjoint under vmap, whose calls take
seconds (each sample carries its own copy of the parameter cotangents through the
backward solve), too slow for many rounds.
"""

import statistics
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import jaxdeq
from jaxdeq.ode import ConcatField, NeuralODE


MAX_STEPS = 4096


class BatchField(eqx.Module):
    """A per-sample vector field mapped over the leading (batch) axis."""

    field: ConcatField

    def __call__(self, t, y, args):
        return jax.vmap(self.field, in_axes=(None, 0, None))(t, y, args)


class CountingField(eqx.Module):
    """A vector field that reports each call to a host-side counter."""

    field: eqx.Module
    counter: list = eqx.field(static=True)

    def __call__(self, t, y, args):
        jax.debug.callback(self._tick, t)
        return self.field(t, y, args)

    def _tick(self, t):
        del t
        self.counter[0] += 1


def _controller(tol):
    return dfx.PIDController(rtol=tol, atol=tol)


def _adjoint(name):
    return {
        "backprop": dfx.RecursiveCheckpointAdjoint(checkpoints=32),  # NeuralODE's
        "adjoint": dfx.BacksolveAdjoint(),
    }[name]


def _ours(field, mode, tol, adjoint, y0):
    """(y1, nfe, num_steps) of jaxdeq's NeuralODE."""
    vf = BatchField(field) if mode == "batch" else field
    block = NeuralODE(
        vf,
        solver=dfx.Dopri5(),
        stepsize_controller=_controller(tol),
        adjoint=_adjoint(adjoint),
        max_steps=MAX_STEPS,
    )
    if mode == "batch":
        y1, stats = block(y0)
    else:
        y1, stats = jax.vmap(block)(y0)
    return y1, stats.num_fn_evals, stats.num_steps


def _raw(field, mode, tol, adjoint, y0):
    """The same solve by `diffrax.diffeqsolve` called directly."""

    def solve(vf, y0):
        t0, t1 = jnp.asarray(0.0, y0.dtype), jnp.asarray(1.0, y0.dtype)
        sol = dfx.diffeqsolve(
            dfx.ODETerm(vf),
            dfx.Dopri5(),
            t0,
            t1,
            None,
            y0,
            None,
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=_controller(tol),
            adjoint=_adjoint(adjoint),
            max_steps=MAX_STEPS,
            throw=False,
        )
        return sol.ys[0], sol.stats["num_steps"]

    if mode == "batch":
        y1, steps = solve(BatchField(field), y0)
    else:
        y1, steps = jax.vmap(lambda y: solve(field, y))(y0)
    return y1, jnp.full_like(steps, -1), steps


def _jax_fns(impl, field, mode, adjoint, y0, forward_too):
    """AOT-compiled value_and_grad of sum(y1^2) w.r.t. the field (and the forward),
    with the tolerance a traced argument: one compilation serves every tolerance."""
    params, static = eqx.partition(field, eqx.is_inexact_array)
    run = _ours if impl == "ours" else _raw

    def forward(params, y0, tol):
        return run(eqx.combine(params, static), mode, tol, adjoint, y0)

    def loss(params, y0, tol):
        y1, nfe, steps = forward(params, y0, tol)
        return jnp.sum(y1**2), (nfe, steps)

    tol = jnp.asarray(1e-3, y0.dtype)
    t0 = time.perf_counter()
    fwd = jax.jit(forward).lower(params, y0, tol).compile() if forward_too else None
    grad = jax.value_and_grad(loss, has_aux=True)
    step = jax.jit(grad).lower(params, y0, tol).compile()
    compile_s = time.perf_counter() - t0
    return params, fwd, step, compile_s


def _backward_counter(field, mode, adjoint, y0):
    """A function tol -> (vector-field calls of one value_and_grad, the forward's
    report.num_fn_evals)."""
    counter = [0]
    if mode == "batch":
        vf = CountingField(BatchField(field), counter)
    else:
        vf = CountingField(field, counter)

    def loss(vf, y0, tol):
        block = NeuralODE(
            vf,
            solver=dfx.Dopri5(),
            stepsize_controller=_controller(tol),
            adjoint=_adjoint(adjoint),
            max_steps=MAX_STEPS,
        )
        if mode == "batch":
            y1, stats = block(y0)
        else:
            y1, stats = jax.vmap(block)(y0)
        return jnp.sum(y1**2), stats.num_fn_evals

    grad = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))

    def count(tol):
        tol = jnp.asarray(tol, y0.dtype)
        jax.block_until_ready(grad(vf, y0, tol))  # compiles on the first call
        jax.effects_barrier()
        counter[0] = 0
        (_, nfe), _ = grad(vf, y0, tol)
        jax.block_until_ready(nfe)
        jax.effects_barrier()
        calls = counter[0] / (1 if mode == "batch" else y0.shape[0])
        return calls, np.asarray(nfe)

    return count


# --------------------------------------------------------------------------- torch
def _torch_field(field, dtype):
    import torch

    class TorchField(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = torch.nn.ModuleList()
            for layer in field.mlp.layers:
                lin = torch.nn.Linear(layer.in_features, layer.out_features)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(np.array(layer.weight)))
                    lin.bias.copy_(torch.from_numpy(np.array(layer.bias)))
                self.linears.append(lin)
            self.to(dtype)
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            h = torch.cat([y, t.to(y.dtype).expand(y.shape[0], 1)], dim=1)
            for lin in self.linears[:-1]:
                h = torch.tanh(lin(h))
            return self.linears[-1](h)

    return TorchField()


def _flat_torch_grads(module):
    return np.concatenate(
        [
            np.concatenate(
                [lin.weight.grad.numpy().ravel(), lin.bias.grad.numpy().ravel()]
            )
            for lin in module.linears
        ]
    )


def _flat_jax_grads(grads):
    return np.concatenate(
        [
            np.concatenate(
                [np.asarray(lyr.weight).ravel(), np.asarray(lyr.bias).ravel()]
            )
            for lyr in grads.mlp.layers
        ]
    )


# -------------------------------------------------------------------------- timing
def interleaved(fns, rounds, budget_s):
    """name -> wall times of `fns[name]()`, timed round-robin in rotating order after
    one warm-up call each; stops after `rounds` rounds or once `budget_s` is spent."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times = {n: [] for n in names}
    start = time.perf_counter()
    for i in range(rounds):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and i >= 2:
            break
    return times


def paired_ratio(a, b):
    r = np.asarray(a) / np.asarray(b)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return dict(median=float(med), q1=float(q1), q3=float(q3), n=len(r))


# ------------------------------------------------------------------------- section
def run_node(
    state=64,
    width=128,
    batch=128,
    tols=(1e-3, 1e-6),
    rounds=15,
    budget_s=20.0,
    overhead_rounds=100,
    overhead_budget_s=20.0,
    seed=0,
    threads=1,
):
    """Forward and forward + backward of NeuralODE vs torchdiffeq; rows of results."""
    import torch
    import torchdiffeq
    from _common import torch_peak_bytes

    torch.set_num_threads(threads)
    kf, ky = jr.split(jr.PRNGKey(seed))
    field = ConcatField(state, 0, width, depth=2, dtype=jnp.float32, key=kf)
    y0 = jr.normal(ky, (batch, state), jnp.float32)
    tf = _torch_field(field, torch.float32)
    y0_t = torch.from_numpy(np.array(y0))
    ts = torch.tensor([0.0, 1.0], dtype=torch.float32)
    ref_field = _torch_field(field, torch.float64)
    with torch.no_grad():
        y_ref = torchdiffeq.odeint(
            ref_field,
            y0_t.double(),
            ts.double(),
            rtol=1e-10,
            atol=1e-10,
            method="dopri5",
        )[-1].numpy()
    out = dict(
        config=dict(
            state=state,
            width=width,
            depth=2,
            batch=batch,
            tols=list(tols),
            seed=seed,
            rounds=rounds,
            overhead_rounds=overhead_rounds,
        ),
        forward=[],
        backward=[],
        overhead=[],
        compile_s={},
    )

    # ours and raw diffrax, every (mode, backward mode), compiled once
    fns, counters = {}, {}
    for impl in ("ours", "raw"):
        for mode in ("batch", "vmap"):
            for adjoint in ("backprop", "adjoint"):
                params, fwd, step, cs = _jax_fns(
                    impl, field, mode, adjoint, y0, forward_too=adjoint == "backprop"
                )
                fns[impl, mode, adjoint] = (params, fwd, step)
                out["compile_s"][f"{impl} {mode} {adjoint}"] = cs
                print(f"    compiled {impl} {mode} {adjoint}: {cs:.1f} s", flush=True)
                if impl == "ours":
                    counters[mode, adjoint] = _backward_counter(
                        field, mode, adjoint, y0
                    )

    def jax_call(fn, params, tol):
        return lambda: jax.block_until_ready(fn(params, y0, tol))

    for tol in tols:
        print(f"  tol {tol:g}", flush=True)
        kw = dict(rtol=tol, atol=tol, method="dopri5")
        jtol = jnp.asarray(tol, jnp.float32)

        def t_forward(kw=kw):
            with torch.no_grad():
                return torchdiffeq.odeint(tf, y0_t, ts, **kw)[-1]

        def t_step(adjoint, kw=kw):
            for p in tf.parameters():
                p.grad = None
            solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
            y1 = solve(tf, y0_t, ts, **kw)[-1]
            loss = (y1**2).sum()
            tf.nfe = 0
            loss.backward()
            return loss

        # torch counts, end state, gradients, memory
        tf.nfe = 0
        y_t = t_forward().numpy()
        torch_fwd_nfe = tf.nfe
        torch_bwd = {}
        for name, adj in (("backprop", False), ("adjoint", True)):
            t_step(adj)
            torch_bwd[name] = dict(
                nfe_bwd=tf.nfe,
                grads=_flat_torch_grads(tf),
                mem=torch_peak_bytes(lambda a=adj: t_step(a)),
            )

        # forward, all rows interleaved
        calls = {("torch",): t_forward}
        for impl in ("ours", "raw"):
            for mode in ("batch", "vmap"):
                params, fwd, _ = fns[impl, mode, "backprop"]
                calls[impl, mode] = jax_call(fwd, params, jtol)
        times = interleaved(calls, rounds, budget_s)
        t_torch = statistics.median(times["torch",])
        out["forward"].append(
            dict(
                tol=tol,
                impl="torchdiffeq",
                mode="batch",
                nfe=torch_fwd_nfe,
                ms=1e3 * t_torch,
                ms_all=[1e3 * t for t in times["torch",]],
                ratio_vs_torch=1.0,
                max_abs_diff_vs_torch=0.0,
                max_abs_err_vs_f64=float(np.abs(y_t - y_ref).max()),
            )
        )
        for mode in ("batch", "vmap"):
            params, fwd, _ = fns["ours", mode, "backprop"]
            y1, nfe, steps = (np.asarray(v) for v in fwd(params, y0, jtol))
            t = statistics.median(times["ours", mode])
            out["forward"].append(
                dict(
                    tol=tol,
                    impl="jaxdeq NeuralODE",
                    mode=mode,
                    nfe=float(nfe.mean()),
                    nfe_max=int(nfe.max()),
                    steps=float(steps.mean()),
                    ms=1e3 * t,
                    ms_all=[1e3 * t for t in times["ours", mode]],
                    raw_diffrax_ms=1e3 * statistics.median(times["raw", mode]),
                    ratio_vs_torch=t / t_torch,
                    max_abs_diff_vs_torch=float(np.abs(y1 - y_t).max()),
                    max_abs_err_vs_f64=float(np.abs(y1 - y_ref).max()),
                )
            )
            r = out["forward"][-1]
            print(
                f"    forward {mode}: nfe {r['nfe']:.1f} (torch {torch_fwd_nfe})"
                f" {r['ms']:.2f} ms vs torch {1e3 * t_torch:.2f} ms"
                f" = {r['ratio_vs_torch']:.3f}; |y - y_torch| "
                f"{r['max_abs_diff_vs_torch']:.1e}",
                flush=True,
            )

        # forward + backward, one interleaved group per backward mode
        for adjoint, torch_name in (
            ("backprop", "odeint"),
            ("adjoint", "odeint_adjoint"),
        ):
            calls = {("torch",): lambda a=adjoint: t_step(a == "adjoint")}
            for impl in ("ours", "raw"):
                for mode in ("batch", "vmap"):
                    params, _, step = fns[impl, mode, adjoint]
                    calls[impl, mode] = jax_call(step, params, jtol)
            times = interleaved(calls, rounds, budget_s)
            t_torch = statistics.median(times["torch",])
            tb = torch_bwd[adjoint]
            out["backward"].append(
                dict(
                    tol=tol,
                    backward=adjoint,
                    impl=f"torchdiffeq {torch_name}",
                    mode="batch",
                    nfe_fwd=torch_fwd_nfe,
                    nfe_bwd=tb["nfe_bwd"],
                    ms=1e3 * t_torch,
                    ms_all=[1e3 * t for t in times["torch",]],
                    ratio_vs_torch=1.0,
                    mem_bytes=tb["mem"],
                    grad_rel_diff_vs_torch=0.0,
                )
            )
            for mode in ("batch", "vmap"):
                params, _, step = fns["ours", mode, adjoint]
                (_, (nfe, _)), grads = step(params, y0, jtol)
                g = _flat_jax_grads(grads)
                calls_total, nfe_c = counters[mode, adjoint](tol)
                nfe = np.asarray(nfe)
                t = statistics.median(times["ours", mode])
                mem = step.memory_analysis()
                name = "RecursiveCheckpoint" if adjoint == "backprop" else "Backsolve"
                out["backward"].append(
                    dict(
                        tol=tol,
                        backward=adjoint,
                        impl=f"jaxdeq NeuralODE {name}Adjoint",
                        mode=mode,
                        nfe_fwd=float(nfe.mean()),
                        nfe_bwd=float(calls_total - nfe_c.max()),
                        callback_calls=calls_total,
                        ms=1e3 * t,
                        ms_all=[1e3 * t for t in times["ours", mode]],
                        raw_diffrax_ms=1e3 * statistics.median(times["raw", mode]),
                        ratio_vs_torch=t / t_torch,
                        mem_bytes=None if mem is None else mem.temp_size_in_bytes,
                        grad_rel_diff_vs_torch=float(
                            np.abs(g - tb["grads"]).max() / np.abs(tb["grads"]).max()
                        ),
                    )
                )
                r = out["backward"][-1]
                print(
                    f"    fwd+bwd {adjoint} {mode}: nfe {r['nfe_fwd']:.0f}+"
                    f"{r['nfe_bwd']:.0f} (torch {torch_fwd_nfe}+{tb['nfe_bwd']})"
                    f" {r['ms']:.2f} ms vs torch {1e3 * t_torch:.2f} ms ="
                    f" {r['ratio_vs_torch']:.3f}; grad diff"
                    f" {r['grad_rel_diff_vs_torch']:.1e}",
                    flush=True,
                )

        # wrapper overhead: NeuralODE vs diffeqsolve, interleaved pairs
        cases = [("forward", "backprop")]
        cases += [("forward+backward", a) for a in ("backprop", "adjoint")]
        for what, adjoint in cases:
            for mode in ("batch", "vmap"):
                if mode == "vmap" and adjoint == "adjoint":
                    continue  # seconds per call: too slow for many paired rounds
                pair = {}
                for impl in ("ours", "raw"):
                    params, fwd, step = fns[impl, mode, adjoint]
                    fn = fwd if what == "forward" else step
                    pair[impl] = jax_call(fn, params, jtol)
                times = interleaved(pair, overhead_rounds, overhead_budget_s)
                ratio = paired_ratio(times["ours"], times["raw"])
                out["overhead"].append(
                    dict(
                        tol=tol,
                        what=what,
                        mode=mode,
                        adjoint="—" if what == "forward" else adjoint,
                        ours_ms=1e3 * statistics.median(times["ours"]),
                        raw_ms=1e3 * statistics.median(times["raw"]),
                        ratio_of_medians=statistics.median(times["ours"])
                        / statistics.median(times["raw"]),
                        paired_ratio=ratio,
                    )
                )
                r = out["overhead"][-1]
                print(
                    f"    overhead {what} {r['adjoint']} {mode}: "
                    f"{r['ours_ms']:.2f} / {r['raw_ms']:.2f} ms, paired ratio "
                    f"{ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]"
                    f" (n={ratio['n']})",
                    flush=True,
                )
    out["jaxdeq_version"] = getattr(jaxdeq, "__version__", None)
    return out


# ------------------------------------------------------------------------ markdown
def _table(cols, lines):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
    return "\n".join(out)


def _mode(mode):
    return {"batch": "batch as one ODE", "vmap": "vmap, per sample"}[mode]


def _mib(b):
    return "—" if b is None else f"{b / 2**20:.2f}"


def node_markdown(res) -> str:
    c = res["config"]
    head = (
        f"MLP vector field (state {c['state']}, {c['depth']} hidden layers of "
        f"{c['width']}, tanh), batch {c['batch']}, t ∈ [0, 1], float32, Dopri5 with "
        "a PID controller at rtol = atol; the same weights on both sides. Ratios are "
        "ours / torchdiffeq from the same interleaved timing (below 1: ours is "
        "faster)."
    )
    fwd = _table(
        [
            "rtol = atol",
            "implementation",
            "mode",
            "NFE",
            "forward ms",
            "ours / torchdiffeq",
            "y(1): max abs diff to torchdiffeq",
            "y(1): max abs error vs float64",
        ],
        [
            [
                f"{r['tol']:g}",
                r["impl"],
                _mode(r["mode"]),
                f"{r['nfe']:.1f}"
                + (f" (max {r['nfe_max']})" if r["mode"] == "vmap" else ""),
                f"{r['ms']:.2f}",
                f"{r['ratio_vs_torch']:.2f}",
                f"{r['max_abs_diff_vs_torch']:.1e}",
                f"{r['max_abs_err_vs_f64']:.1e}",
            ]
            for r in res["forward"]
        ],
    )
    bwd = _table(
        [
            "rtol = atol",
            "backward",
            "implementation",
            "mode",
            "NFE fwd + bwd",
            "fwd + bwd ms",
            "ours / torchdiffeq",
            "memory MiB",
            "grad rel diff vs torch",
        ],
        [
            [
                f"{r['tol']:g}",
                "backprop through solver"
                if r["backward"] == "backprop"
                else "adjoint ODE",
                r["impl"],
                _mode(r["mode"]),
                f"{r['nfe_fwd']:.0f} + {r['nfe_bwd']:.0f}",
                f"{r['ms']:.2f}",
                f"{r['ratio_vs_torch']:.2f}",
                _mib(r["mem_bytes"]),
                f"{r['grad_rel_diff_vs_torch']:.1e}",
            ]
            for r in res["backward"]
        ],
    )
    ovh = _table(
        [
            "rtol = atol",
            "timed",
            "backward",
            "mode",
            "NeuralODE ms",
            "diffeqsolve ms",
            "paired ratio, median [IQR]",
            "rounds",
        ],
        [
            [
                f"{r['tol']:g}",
                r["what"],
                r["adjoint"],
                _mode(r["mode"]),
                f"{r['ours_ms']:.2f}",
                f"{r['raw_ms']:.2f}",
                f"{r['paired_ratio']['median']:.3f} [{r['paired_ratio']['q1']:.3f},"
                f" {r['paired_ratio']['q3']:.3f}]",
                r["paired_ratio"]["n"],
            ]
            for r in res["overhead"]
        ],
    )
    return "\n\n".join(
        [
            head,
            "### Forward\n\n" + fwd,
            "### Forward + backward (loss = Σ y(1)²)\n\n" + bwd,
            "Torch memory: peak net CPU-allocator bytes (profiler); ours: XLA temp "
            "bytes of the compiled step. Backward NFE: torch counts module calls "
            "during `loss.backward()`; ours counts vector-field calls (debug "
            "callback) in one value_and_grad minus the forward's "
            "`report.num_fn_evals` (vmap: "
            "per sample of the batched loop).",
            "### Wrapper overhead: NeuralODE / diffrax.diffeqsolve\n\n" + ovh,
        ]
    )
