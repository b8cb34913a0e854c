"""Monotone DEQs on 8x8 digits: one script, one run, one table per section.

Section "mondeq" (`run_mondeq`). Data: scikit-learn digits through
`jaxdeq.data.load_digits` (80/20 seeded split, standardised with training statistics),
or `--data PATH`, an .npz with x_train, y_train, x_test, y_test (images HxH or flat
H*H, standardised the same way). Two classifiers, float32, trained with optax adam
(--lr, --epochs, batch --batch, last partial batch dropped so the jitted step never
recompiles: the number of traces of the step is recorded):

- dense: x (64) -> MonDEQ(MonotoneLinear(64, margin 1), eqx.nn.Linear(64, 64))
  -> eqx.nn.Linear(64, 10);
- conv: x (1x8x8) -> MonDEQ(MonotoneConv(C, 8, 8, margin 1, 3x3 kernels),
  eqx.nn.Conv2d(1, C, 3, padding=1)) -> 2x2 average pooling -> flatten
  -> eqx.nn.Linear(C*16, 10); C = --channels (16).

Both train with jaxdeq.PeacemanRachford(alpha=--alpha, rtol=1e-4, atol=1e-6), the
layer's default tolerance, and jaxdeq.SplittingAdjoint (the backward as the
transposed splitting, rtol 1e-6).

Measured per trained model, on the whole test set as one batch (vmap over samples,
so a batch runs until its slowest sample stops): the same layer with its forward
solver swapped, all at rtol=1e-4, atol=1e-6 on ||f(z)-z|| <= atol + rtol ||f(z)||
per sample, step cap --max-steps (1000): ForwardBackward with alpha=None (m/L^2),
with alpha = 2m/L^2 (the largest with guaranteed convergence), and with the training
alpha where that is above the bound (the paper reports forward-backward failing
there); PeacemanRachford with alpha=None (1/sqrt(mL)) and with the training alpha;
and jaxdeq.Anderson (memory 5, default ridge) on the same fixed-point map.

Columns: iterations (solver steps per sample, mean and max; a step is one
evaluation of the map plus, for the splittings, one prox step), samples reported
converged, test accuracy, forward time (median of up to --repeats calls after a
compiled warm-up, outputs block_until_ready), compiled memory (XLA memory analysis,
temp + output bytes), and the error of z against a float64 reference
(Peaceman-Rachford in NumPy on the float64 W and injection, to a relative residual
of 1e-11): max |z - z*| and the max over samples of ||z - z*|| / ||z*||; "max rel
res" is ||f(z)-z|| / ||f(z)|| measured in float64. Ratios are row / "PR (training
alpha)" of the same model, from the same run. One thread everywhere: XLA's
--xla_cpu_multi_thread_eigen=false, torch.set_num_threads(1), and
OPENBLAS/OMP/MKL_NUM_THREADS=1, because jaxlib's CPU LU factorisation and
triangular solves call a threaded OpenBLAS: with its threads on a loaded 2-core
machine one and the same Peaceman-Rachford forward took 1.3 to 360 ms.

Peer: the authors' code (Winston & Kolter, github.com/locuslab/monotone_op_net),
with --authors-code DIR pointing at an extracted copy (never copied into this
repository; imported from DIR at run time; its train.py needs torchvision, so a stub
`train` module providing `cuda` is registered when that import fails). Their
MONSingleFc is loaded with our trained dense weights (U, b, A, B, m) and their
MONForwardBackwardSplitting / MONPeacemanRachford run on the same test batch
(CPU torch, one thread, float32, tol=1e-4, max_iter=--max-steps) with each alpha of
our splitting rows. Their stopping test is batch-wide: by default the relative
change ||z_k - z_{k-1}|| / ||z_k|| of the whole batch ("step test"); with
save_abs_err=True the relative fixed-point residual of the whole batch ("residual
test", one extra product with W per step, as ours). They return f(z_k). Their
iteration count is the number of updates; ours also counts the final residual
evaluation. Memory: peak of net CPU-allocator bytes from the torch profiler.
Their convolutional layer calls torch.rfft, removed in torch 1.8 (checked at run
time), so only the dense model is compared.

    python benchmarks/monotone.py            # -> benchmarks/results/monotone.*
    python benchmarks/monotone.py --quick    # smoke test (-> monotone_quick.*)
    python benchmarks/monotone.py --authors-code /tmp/monotone_op_net
"""

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Monotone DEQ benchmark (see docstring).")
    p.add_argument("--quick", action="store_true", help="smoke test, < 1 min")
    p.add_argument("--data", help=".npz with x_train, y_train, x_test, y_test")
    p.add_argument("--sections", help="comma-separated subset of: mondeq,dbm")
    p.add_argument("--epochs", type=int, help="default 40 (quick: 1)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64, help="dense state size")
    p.add_argument("--channels", type=int, help="conv state channels (16; quick 4)")
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5, help="training PR step")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--max-steps", type=int, default=1000, help="evaluation step cap")
    p.add_argument("--repeats", type=int, help="max timed calls per measurement")
    p.add_argument("--no-conv", action="store_true", help="skip the conv model")
    p.add_argument("--authors-code", metavar="DIR", help="extracted monotone_op_net")
    p.add_argument("--threads", type=int, default=1, help="for torch and XLA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dbm-epochs", type=int, default=30)
    p.add_argument("--dbm-hidden", type=int, default=32)
    p.add_argument("--dbm-gamma", type=float, default=0.0, help="focal exponent")
    p.add_argument("--dbm-pixel-weight", type=float, default=0.9)
    p.add_argument("--dbm-margin", type=float, default=0.1)
    p.add_argument("--dbm-lr", type=float, default=1e-2)
    p.add_argument(
        "--dbm-adjoint", choices=("implicit", "splitting"), default="implicit"
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    cfg = p.parse_args(argv)
    cfg.epochs = cfg.epochs or (1 if cfg.quick else 40)
    cfg.channels = cfg.channels or (4 if cfg.quick else 16)
    cfg.repeats = cfg.repeats or (1 if cfg.quick else 15)
    cfg.max_steps = min(cfg.max_steps, 300) if cfg.quick else cfg.max_steps
    # quick: a subset of the data, so that every code path runs in seconds
    cfg.subset = (256, 64) if cfg.quick else None
    return cfg


CFG = parse_args() if __name__ == "__main__" else None
if CFG is not None:  # must be set before numpy and jax are imported
    if CFG.threads == 1:
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        os.environ["XLA_FLAGS"] = flags
    # jaxlib's CPU LU factorisation and triangular solves (Peaceman-Rachford's
    # resolvent) call an OpenBLAS LAPACK that otherwise starts its own threads.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(CFG.threads))

import _common  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import torch_peak_bytes  # noqa: E402

import jaxdeq  # noqa: E402
import jaxdeq.data  # noqa: E402
import jaxdeq.monotone as mono  # noqa: E402


try:  # public once exported; until then from its private module
    MonotoneConv = getattr(mono, "MonotoneConv", None)
    if MonotoneConv is None:
        from jaxdeq.monotone._conv import MonotoneConv
except Exception as e:  # noqa: BLE001 - any failure means "no conv model"
    MonotoneConv, CONV_MISSING = None, f"{type(e).__name__}: {e}"
else:
    CONV_MISSING = None


# ---------------------------------------------------------------------------- data
def load_data(cfg):
    """(x_train, y_train, x_test, y_test, side, source): flat float32 features."""
    if cfg.data is None:
        x_tr, y_tr, x_te, y_te = jaxdeq.data.load_digits(seed=cfg.seed)
        source = f"scikit-learn digits via jaxdeq.data.load_digits(seed={cfg.seed})"
    else:
        with np.load(cfg.data) as f:
            x_tr, y_tr, x_te, y_te = (
                f[k] for k in ("x_train", "y_train", "x_test", "y_test")
            )
        x_tr = np.asarray(x_tr, np.float64).reshape(len(x_tr), -1)
        x_te = np.asarray(x_te, np.float64).reshape(len(x_te), -1)
        mean, std = x_tr.mean(0), x_tr.std(0)
        std = np.where(std > 0, std, 1.0)
        x_tr, x_te = ((a - mean) / std for a in (x_tr, x_te))
        source = f"{cfg.data} (standardised with training statistics)"
    x_tr, x_te = np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32)
    y_tr, y_te = np.asarray(y_tr, np.int32), np.asarray(y_te, np.int32)
    if cfg.subset:
        x_tr, y_tr = x_tr[: cfg.subset[0]], y_tr[: cfg.subset[0]]
        x_te, y_te = x_te[: cfg.subset[1]], y_te[: cfg.subset[1]]
    side = math.isqrt(x_tr.shape[1])
    side = side if side * side == x_tr.shape[1] else None
    return x_tr, y_tr, x_te, y_te, side, source


# --------------------------------------------------------------------------- model
class Classifier(eqx.Module):
    """A monotone DEQ layer and a linear head, on one flat sample."""

    layer: mono.MonDEQ
    head: eqx.nn.Linear
    image_shape: tuple[int, ...] | None = eqx.field(static=True)
    pool: int = eqx.field(static=True)

    def features(self, x):
        return x if self.image_shape is None else x.reshape(self.image_shape)

    def readout(self, z):
        if z.ndim == 3:  # (channels, height, width): average pooling
            c, h, w = z.shape
            p = self.pool
            z = z.reshape(c, h // p, p, w // p, p).mean(axis=(2, 4))
        return z.reshape(-1)

    def __call__(self, x, probe=None):
        z, report = self.layer(self.features(x), backward_stats=probe)
        return self.head(self.readout(z)), z, report


def make_models(cfg, n_in, n_classes, side, key):
    """name -> untrained Classifier."""
    k1, k2, k3, k4, k5, k6 = jr.split(key, 6)
    train_solver = jaxdeq.PeacemanRachford(
        rtol=cfg.rtol, atol=cfg.atol, alpha=cfg.alpha
    )
    dense = mono.MonDEQ(
        mono.MonotoneLinear(cfg.hidden, margin=cfg.margin, key=k1),
        eqx.nn.Linear(n_in, cfg.hidden, key=k2),
        solver=train_solver,
    )
    models = {
        "dense": Classifier(
            dense, eqx.nn.Linear(cfg.hidden, n_classes, key=k3), None, 1
        )
    }
    if MonotoneConv is not None and side is not None and not cfg.no_conv:
        c, pool = cfg.channels, 2 if side % 2 == 0 else 1
        conv = mono.MonDEQ(
            MonotoneConv(c, side, side, margin=cfg.margin, kernel_size=3, key=k4),
            eqx.nn.Conv2d(1, c, 3, padding=1, key=k5),
            solver=train_solver,
        )
        n_feat = c * (side // pool) ** 2
        head = eqx.nn.Linear(n_feat, n_classes, key=k6)
        models["conv"] = Classifier(conv, head, (1, side, side), pool)
    return models


def n_params(model):
    return sum(
        x.size
        for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    )


# ------------------------------------------------------------------------ training
def train(model, data, cfg, seed):
    x_tr, y_tr = data
    opt = optax.adam(cfg.lr)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    traces = [0]

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        traces[0] += 1  # runs only when traced

        def loss(diff):
            model, probe = diff
            logits, _, report = jax.vmap(model)(x, probe)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce, report.num_steps

        probe = jaxdeq.BackwardStats.probe((x.shape[0],))
        grad_fn = eqx.filter_value_and_grad(loss, has_aux=True)
        (value, fwd_steps), (grads, bstats) = grad_fn((model, probe))
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = opt.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return model, opt_state, value, fwd_steps, bstats.num_steps

    rng = np.random.default_rng(seed)
    batch = min(cfg.batch, len(x_tr))
    per_epoch = len(x_tr) // batch
    history, step_times, t0 = [], [], time.perf_counter()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(x_tr))
        losses, fwd, bwd = [], [], []
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            t = time.perf_counter()
            model, opt_state, value, f, b = step(model, opt_state, x_tr[idx], y_tr[idx])
            value = float(value)  # blocks
            step_times.append(time.perf_counter() - t)
            losses.append(value)
            fwd.append(np.asarray(f))
            bwd.append(np.asarray(b))
        fwd, bwd = np.concatenate(fwd), np.concatenate(bwd)
        history.append(
            dict(
                loss=float(np.mean(losses)),
                fwd_steps_mean=float(fwd.mean()),
                fwd_steps_max=int(fwd.max()),
                bwd_steps_mean=float(bwd.mean()),
                bwd_steps_max=float(bwd.max()),
            )
        )
        if epoch % 10 == 0 or epoch == cfg.epochs - 1:
            h = history[-1]
            print(
                f"    epoch {epoch + 1:3d} loss {h['loss']:.4f} fwd steps"
                f" {h['fwd_steps_mean']:.1f} (max {h['fwd_steps_max']}) bwd steps"
                f" {h['bwd_steps_mean']:.1f}",
                flush=True,
            )
    wall = time.perf_counter() - t0
    traces_in_loop = traces[0]
    x0, y0 = x_tr[:batch], y_tr[:batch]
    compiled = step.lower(model, opt_state, x0, y0).compile()  # for its memory
    mem = memory_bytes(compiled.compiled)
    info = dict(
        epochs=cfg.epochs,
        steps=len(step_times),
        batch=batch,
        train_wall_s=wall,
        first_step_s=step_times[0],
        step_s_median=statistics.median(step_times[1:] or step_times),
        traces_of_step=traces_in_loop,
        step_mem=mem,
        history=history,
        last_epoch=history[-1],
    )
    return model, info


# ---------------------------------------------------------------------- evaluation
def memory_bytes(compiled):
    m = compiled.memory_analysis()
    return None if m is None else m.temp_size_in_bytes + m.output_size_in_bytes


def timeit(fn, repeats, sync=lambda out: out, budget_s=4.0):
    """Wall times of up to `repeats` calls after a warm-up (fewer once `budget_s` is
    spent)."""
    out = sync(fn())
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        out = sync(fn())
        times.append(time.perf_counter() - t0)
    return times, out


def with_solver(model, solver, max_steps):
    layer = dataclasses.replace(model.layer, solver=solver, max_steps=max_steps)
    return dataclasses.replace(model, layer=layer)


def fb_bound(model):
    op = model.layer.operator
    return float(2 * op.margin / op.lipschitz() ** 2)


def solver_rows(model, cfg):
    """(name, method, alpha, solver) for every forward solver measured."""
    tol = dict(rtol=cfg.rtol, atol=cfg.atol)
    bound = fb_bound(model)
    rows = [
        ("FB α=None (m/L²)", "FB", bound / 2, jaxdeq.ForwardBackward(**tol)),
        ("FB α=2m/L² (bound)", "FB", bound, jaxdeq.ForwardBackward(alpha=bound, **tol)),
    ]
    if cfg.alpha > bound:
        fb = jaxdeq.ForwardBackward(alpha=cfg.alpha, **tol)
        rows.append((f"FB α={cfg.alpha:g} (> bound)", "FB", cfg.alpha, fb))
    op = model.layer.operator
    pr_auto = float(1 / math.sqrt(op.margin * float(op.lipschitz())))
    rows += [
        ("PR α=None (1/√(mL))", "PR", pr_auto, jaxdeq.PeacemanRachford(**tol)),
        (
            f"PR α={cfg.alpha:g} (training)",
            "PR",
            cfg.alpha,
            jaxdeq.PeacemanRachford(alpha=cfg.alpha, **tol),
        ),
        ("Anderson (m=5)", "Anderson", None, jaxdeq.Anderson(**tol)),
    ]
    if cfg.quick:  # one of each kind: compiling a row takes longer than running it
        rows = [rows[0]] + [r for r in rows if "training" in r[0] or r[1] == "Anderson"]
    return rows


def reference(W, bias, alpha, tol=1e-11, max_iter=20000):
    """Float64 fixed points of z = relu(W z + bias), rows of `bias` are samples, by
    Peaceman-Rachford with an explicit inverse."""
    n = W.shape[0]
    V = np.linalg.inv(np.eye(n) + alpha * (np.eye(n) - W))
    z = u = np.zeros_like(bias)
    for i in range(max_iter):
        u_half = 2 * z - u
        u = 2 * ((u_half + alpha * bias) @ V.T) - u_half
        z = np.maximum(u, 0)
        if i % 10 == 9 and rel_residual(W, bias, z).max() <= tol:
            break
    return z


def rel_residual(W, bias, z):
    z = np.asarray(z, np.float64)
    fz = np.maximum(z @ W.T + bias, 0)
    return np.linalg.norm(fz - z, axis=1) / (np.linalg.norm(fz, axis=1) + 1e-30)


def errors_against(W, bias, z_ref, z):
    z = np.asarray(z, np.float64).reshape(z_ref.shape)
    err = np.linalg.norm(z - z_ref, axis=1) / np.maximum(
        np.linalg.norm(z_ref, axis=1), 1e-30
    )
    return dict(
        max_rel_res=float(rel_residual(W, bias, z).max()),
        max_abs_err=float(np.abs(z - z_ref).max()),
        max_rel_err=float(err.max()),
    )


def evaluate(model, x_te, y_te, cfg):
    """Forward solves of the trained model with each solver; rows of results."""
    layer = model.layer
    W = np.asarray(layer.operator.as_matrix(), np.float64)
    inj = jax.vmap(lambda x: layer.injection(model.features(x)).reshape(-1))(x_te)
    bias = np.asarray(inj, np.float64)
    z_ref = reference(W, bias, cfg.alpha)
    ref = dict(
        W=W, bias=bias, z=z_ref, max_rel_res=float(rel_residual(W, bias, z_ref).max())
    )
    rows = []
    for name, method, alpha, solver in solver_rows(model, cfg):
        variant = with_solver(model, solver, cfg.max_steps)
        params, static = eqx.partition(variant, eqx.is_array)

        def forward(params, x, static=static):
            m = eqx.combine(params, static)
            logits, z, report = jax.vmap(m)(x)
            return logits, z, report.num_steps, report.successful

        t0 = time.perf_counter()
        try:
            compiled = jax.jit(forward).lower(params, x_te).compile()
            t_compile = time.perf_counter() - t0
            times, (logits, z, steps, ok) = timeit(
                lambda c=compiled, p=params: c(p, x_te),
                cfg.repeats,
                jax.block_until_ready,
            )
        except Exception as e:  # noqa: BLE001 - report a crashing solver, go on
            err = f"{type(e).__name__}: {str(e)[:1000]}"
            print(f"    {name}: CRASHED: {err[:300]}", flush=True)
            rows.append(dict(solver=name, method=method, alpha=alpha, error=err))
            continue
        steps = np.asarray(steps)
        r = dict(
            solver=name,
            method=method,
            alpha=alpha,
            iters_mean=float(steps.mean()),
            iters_max=int(steps.max()),
            converged=float(np.mean(ok)),
            accuracy=float(np.mean(np.argmax(np.asarray(logits), 1) == y_te)),
            t_fwd=statistics.median(times),
            t_fwd_min=min(times),
            t_fwd_all=times,
            compile_s=t_compile,
            mem_fwd=memory_bytes(compiled),
            _z=np.asarray(z, np.float64).reshape(len(z), -1),
        )
        r.update(errors_against(W, bias, z_ref, r["_z"]))
        rows.append(r)
        print(
            f"    {name:24s} iters {r['iters_mean']:6.1f} (max {r['iters_max']:4d})"
            f" conv {r['converged']:.2f} acc {r['accuracy']:.4f}"
            f" fwd {1e3 * r['t_fwd']:7.2f} ms res {r['max_rel_res']:.1e}"
            f" err {r['max_rel_err']:.1e}",
            flush=True,
        )
    base = next(
        (r for r in rows if "training" in r["solver"] and "error" not in r), None
    )
    for r in rows:
        if base and "error" not in r:
            r["iters_ratio"] = r["iters_mean"] / base["iters_mean"]
            r["time_ratio"] = r["t_fwd"] / base["t_fwd"]
    return rows, ref


# --------------------------------------------------------------------- the authors
def load_authors(directory):
    """Import the authors' `mon` and `splitting` modules from `directory`."""
    import torch

    directory = str(Path(directory).resolve())
    if not (Path(directory) / "splitting.py").exists():
        raise FileNotFoundError(f"no splitting.py in {directory}")
    sys.path.insert(0, directory)
    try:
        importlib.import_module("train")
    except ImportError:  # train.py imports torchvision; utils.py only needs `cuda`
        stub = types.ModuleType("train")
        stub.cuda = lambda tensor: tensor
        sys.modules["train"] = stub
    mon = importlib.import_module("mon")
    splitting = importlib.import_module("splitting")
    return torch, mon, splitting


def run_authors(cfg, model, x_te, ours, ref):
    """Their fully connected monDEQ with our trained dense weights; rows."""
    if not cfg.authors_code:
        return None, "not requested (pass --authors-code DIR)"
    try:
        torch, mon, splitting = load_authors(cfg.authors_code)
    except Exception as e:  # noqa: BLE001 - any failure means "skip this peer"
        return None, f"could not import the authors' code: {type(e).__name__}: {e}"
    torch.set_num_threads(cfg.threads)
    layer = model.layer
    op, inj = layer.operator, layer.injection
    if op.A.shape[0] != op.A.shape[1]:
        return None, "their MONSingleFc has a square A; ours has rank != size"
    n_in, n = inj.weight.shape[1], op.B.shape[0]
    lin = mon.MONSingleFc(n_in, n, m=op.margin)
    as_t = lambda a: torch.from_numpy(np.array(a, np.float32))
    with torch.no_grad():
        lin.U.weight.copy_(as_t(inj.weight))
        lin.U.bias.copy_(as_t(inj.bias))
        lin.A.weight.copy_(as_t(op.A))
        lin.B.weight.copy_(as_t(op.B))
    x = as_t(x_te)
    rows = []
    for r in ours:
        if r["method"] not in ("FB", "PR") or "error" in r:
            continue
        cls = (
            splitting.MONForwardBackwardSplitting
            if r["method"] == "FB"
            else splitting.MONPeacemanRachford
        )
        for abs_err, test in ((False, "step test"), (True, "residual test")):
            sp = cls(
                lin,
                mon.MONReLU(),
                alpha=r["alpha"],
                tol=cfg.rtol,
                max_iter=cfg.max_steps,
            )
            sp.save_abs_err = abs_err

            def forward(sp=sp):
                with torch.no_grad():
                    return sp(x)[0]

            mem = torch_peak_bytes(forward)
            times, z = timeit(forward, cfg.repeats)
            iters = int(sp.stats.fwd_iters.val)
            z = z.double().numpy()
            row = dict(
                solver=f"authors {r['method']} α={r['alpha']:.4g}, {test}",
                ours=r["solver"],
                method=r["method"],
                alpha=r["alpha"],
                test=test,
                iters=iters,
                t_fwd=statistics.median(times),
                t_fwd_min=min(times),
                t_fwd_all=times,
                mem_fwd=mem,
                ours_iters_mean=r["iters_mean"],
                ours_iters_max=r["iters_max"],
                ours_t_fwd=r["t_fwd"],
                ours_over_theirs_time=r["t_fwd"] / statistics.median(times),
                **errors_against(ref["W"], ref["bias"], ref["z"], z),
            )
            # Their fixed point against ours (the same row of ours, same alpha).
            row["max_abs_diff_vs_ours"] = float(np.abs(z - r["_z"]).max())
            rows.append(row)
            print(
                f"    {row['solver']:48s} iters {iters:4d} fwd"
                f" {1e3 * row['t_fwd']:7.2f} ms err {row['max_rel_err']:.1e}"
                f" |z - ours| {row['max_abs_diff_vs_ours']:.1e}",
                flush=True,
            )
    return rows, None


def authors_conv_note(cfg):
    if not cfg.authors_code:
        return "not requested (pass --authors-code DIR)"
    try:
        import torch
    except ImportError as e:
        return f"torch not importable ({e})"
    if not hasattr(torch, "rfft"):
        return (
            "their MONSingleConv calls torch.rfft/torch.irfft, removed in torch 1.8;"
            f" installed torch {torch.__version__}"
        )
    return "their conv layer has another parameterisation (no shared weights)"


# ------------------------------------------------------------------ section: mondeq
def run_mondeq(cfg) -> dict:
    """Train the dense (and conv) monDEQ classifiers and measure their solvers."""
    x_tr, y_tr, x_te, y_te, side, source = load_data(cfg)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    key = jr.PRNGKey(cfg.seed)
    models = make_models(cfg, x_tr.shape[1], n_classes, side, key)
    notes = []
    if "conv" not in models:
        why = (
            "--no-conv"
            if cfg.no_conv
            else CONV_MISSING or f"{x_tr.shape[1]} features are not a square image"
        )
        notes.append(f"conv model skipped: {why}")
    data = dict(source=source, train=len(x_tr), test=len(x_te), digits=not cfg.data)
    out = dict(data=data, models={})
    for name, model in models.items():
        print(f"  model {name}: {n_params(model)} parameters, training", flush=True)
        model, info = train(model, (x_tr, y_tr), cfg, cfg.seed)
        info["params"] = n_params(model)
        info["lipschitz_I_minus_W"] = float(model.layer.operator.lipschitz())
        info["fb_bound"] = fb_bound(model)
        print(
            f"  model {name}: trained in {info['train_wall_s']:.1f} s"
            f" ({info['traces_of_step']} trace(s) of the step); L = ||I - W|| ="
            f" {info['lipschitz_I_minus_W']:.3f}, FB bound 2m/L² ="
            f" {info['fb_bound']:.4f}",
            flush=True,
        )
        rows, ref = evaluate(model, x_te, y_te, cfg)
        info["reference_max_rel_res"] = ref["max_rel_res"]
        entry = dict(training=info, rows=rows)
        if name == "dense":
            authors, why = run_authors(cfg, model, x_te, rows, ref)
        else:
            authors, why = None, authors_conv_note(cfg)
        entry["authors"], entry["authors_skipped"] = authors, why
        if why:
            print(f"  note: authors' code skipped: {why}", flush=True)
        out["models"][name] = entry
    out["notes"] = notes
    return out


def fmt(v, spec, scale=1.0):
    return "—" if v is None else format(v * scale, spec)


def table(cols, lines):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
    return "\n".join(out)


def training_row(name, entry):
    t, last = entry["training"], entry["training"]["last_epoch"]
    pr = next((r for r in entry["rows"] if "training" in r["solver"]), {})
    return [
        name,
        t["params"],
        t["epochs"],
        f"{t['train_wall_s']:.1f}",
        f"{1e3 * t['step_s_median']:.1f}",
        t["traces_of_step"],
        f"{last['fwd_steps_mean']:.1f} / {last['fwd_steps_max']}",
        f"{last['bwd_steps_mean']:.1f} / {last['bwd_steps_max']:.0f}",
        fmt(t["step_mem"], ".2f", 2**-20),
        f"{t['lipschitz_I_minus_W']:.3f}",
        f"{t['fb_bound']:.4f}",
        fmt(pr.get("accuracy"), ".4f"),
    ]


TRAINING_COLS = [
    "model",
    "params",
    "epochs",
    "train s",
    "ms/step",
    "traces of step",
    "fwd iters mean / max (last epoch)",
    "bwd iters mean / max",
    "step MiB",
    "L = ‖I−W‖",
    "FB bound 2m/L²",
    "test acc (PR)",
]


def solver_row(r):
    if "error" in r:
        return [r["solver"], f"crashed: {r['error'][:80]}"] + [""] * 9
    return [
        r["solver"],
        fmt(r["alpha"], ".4g"),
        f"{r['iters_mean']:.1f} / {r['iters_max']}",
        f"{r['converged']:.3f}",
        f"{r['accuracy']:.4f}",
        f"{1e3 * r['t_fwd']:.2f} ({1e3 * r['t_fwd_min']:.2f})",
        fmt(r.get("iters_ratio"), ".2f"),
        fmt(r.get("time_ratio"), ".2f"),
        fmt(r["mem_fwd"], ".2f", 2**-20),
        f"{r['max_rel_res']:.1e}",
        f"{r['max_rel_err']:.1e}",
    ]


SOLVER_COLS = [
    "solver",
    "α",
    "iters mean / max",
    "converged",
    "test acc",
    "fwd ms median (min)",
    "iters / PR",
    "time / PR",
    "fwd MiB",
    "max rel res",
    "max rel err vs f64",
]


def authors_row(r):
    ours = f"{r['ours_iters_mean']:.1f} / {r['ours_iters_max']}"
    return [
        r["solver"],
        f"{r['iters']} vs {ours}",
        f"{1e3 * r['t_fwd']:.2f} ({1e3 * r['t_fwd_min']:.2f}) vs"
        f" {1e3 * r['ours_t_fwd']:.2f}",
        f"{r['ours_over_theirs_time']:.2f}",
        fmt(r["mem_fwd"], ".2f", 2**-20),
        f"{r['max_rel_res']:.1e}",
        f"{r['max_rel_err']:.1e}",
        f"{r['max_abs_diff_vs_ours']:.1e}",
    ]


AUTHORS_COLS = [
    "their solver",
    "iters: theirs vs ours (mean / max)",
    "fwd ms median (min): theirs vs ours",
    "time ours / theirs",
    "their peak MiB",
    "their max rel res",
    "their max rel err vs f64",
    "max abs diff vs ours",
]


def mondeq_markdown(res) -> str:
    data = res["data"]
    parts = [
        f"Data: {data['source']}; {data['train']} training and {data['test']} test"
        " samples.",
        "### Training\n\n"
        + table(TRAINING_COLS, [training_row(*kv) for kv in res["models"].items()]),
    ]
    for name, entry in res["models"].items():
        parts.append(
            f"### {name} model: forward solvers on the test set (one batch)\n\n"
            + table(SOLVER_COLS, [solver_row(r) for r in entry["rows"]])
        )
        if entry.get("authors_skipped"):
            parts.append(f"Authors' code: skipped — {entry['authors_skipped']}.")
        elif entry.get("authors"):
            parts.append(
                f"### {name} model: the authors' code, same weights, same batch\n\n"
                + table(AUTHORS_COLS, [authors_row(r) for r in entry["authors"]])
            )
    parts.append(compare_sentence(res))
    parts += [f"Note: {n}" for n in res.get("notes", [])]
    return "\n\n".join(p for p in parts if p)


def find(rows, text):
    """The first row (that did not crash) whose solver name contains `text`."""
    return next(
        (r for r in rows or () if text in r["solver"] and "error" not in r), None
    )


def compare_sentence(res):
    dense = res["models"].get("dense")
    pr = dense and find(dense["rows"], "training")
    if not pr or not res["data"].get("digits"):
        return ""
    text = (
        "Comparison with references.md §6: the dense monDEQ reaches test accuracy"
        f" {pr['accuracy']:.3f} with PR α={pr['alpha']:g} in {pr['iters_mean']:.1f}"
        " iterations per solve on average (our earlier trial: ≈ 0.978 in ≈ 11)."
    )
    above = find(dense["rows"], "> bound")
    if above:
        text += (
            f" Forward–backward above its bound (α={above['alpha']:g}) converged for"
            f" {100 * above['converged']:.0f} % of the test samples"
            " (the paper: it fails on their MNIST model for α > 0.125, while"
            " Peaceman–Rachford converges for every α)."
        )
    theirs = [r for r in dense.get("authors") or () if r["ours"] == pr["solver"]]
    if theirs:
        its = " / ".join(f"{r['iters']} ({r['test']})" for r in theirs)
        ratio = " / ".join(f"{r['ours_over_theirs_time']:.2f}" for r in theirs)
        diff = max(r["max_abs_diff_vs_ours"] for r in theirs)
        errs = max(r["max_rel_err"] for r in theirs)
        text += (
            f" The authors' Peaceman–Rachford with the same weights and α takes {its}"
            f" iterations; its fixed points differ from ours by at most {diff:.1e}"
            f" (absolute), both within {max(errs, pr['max_rel_err']):.1e} (relative)"
            " of the float64 reference; forward time ours / theirs ="
            f" {ratio}."
        )
    conv = res["models"].get("conv")
    cpr = conv and find(conv["rows"], "training")
    if cpr:
        text += (
            f" The conv monDEQ reaches {cpr['accuracy']:.3f} on the same task in"
            f" {cpr['iters_mean']:.1f} PR iterations; the paper's convolutional"
            " numbers (CIFAR-10 74.1 %) are on another task and not comparable."
        )
    return text


# -------------------------------------------------------------------------- driver
def versions():
    return _common.versions(
        ("jax", "jaxlib", "equinox", "optimistix", "optax", "numpy", "torch", "jaxdeq"),
        jax,
        jaxdeq,
    )


def finite(v):
    """JSON-safe copy: NaN/inf become null; private keys (leading _) dropped."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def dbm_markdown(res) -> str:
    cfg = res["config"]
    head = (
        f"Monotone DBM: 64 pixel variables (4 intensity bins), {cfg['hidden']} hidden "
        f"4-state variables and the label, margin {cfg['margin']}, "
        f"{cfg['solver']} forward, {cfg['adjoint']} backward, {cfg['epochs']} epochs "
        f"(adam {cfg['lr']}, loss {cfg['pixel_weight']} x focal loss with exponent "
        f"{cfg['gamma']} on the missing pixels + {1 - cfg['pixel_weight']:.1f} x "
        "cross-entropy on the label). RBM: categorical visible "
        "units (pixels and label), 128 binary hidden units, CD-1, mean-field "
        "completion. Both train with each pixel observed with probability 0.4 and "
        "are evaluated on the same test masks."
    )
    lines = []
    rows = (
        ("monotone DBM (jaxdeq)", "monotone_dbm"),
        ("monotone DBM, the paper's loss", "monotone_dbm_paper_loss"),
        ("RBM (CD-1)", "rbm"),
    )
    for name, key in rows:
        r = res.get(key)
        if r is None:
            continue
        lines.append(
            [
                name,
                f"{r['accuracy_all_pixels']:.3f}",
                f"{r['accuracy_40pct_pixels']:.3f}",
                f"{r['completion_accuracy']:.3f}",
                f"{r['train_seconds']:.0f}",
            ]
        )
    lines.append(
        [
            "per-pixel majority",
            "—",
            "—",
            f"{res['majority_completion_accuracy']:.3f}",
            "—",
        ]
    )
    cols = [
        "model",
        "classification, all pixels",
        "classification, 40 % pixels",
        "completion accuracy (missing pixels)",
        "train s",
    ]
    d = res["monotone_dbm"]
    tail = (
        f"Mean-field inference of the monotone DBM: {d['mean_steps']:.1f} "
        f"Peaceman–Rachford steps per test sample on average, "
        f"{d['failed_solves']} failed solves. Our earlier small trial "
        "(references.md §6) reached ≈ 0.92 / ≈ 0.72 classification and ≈ 0.71 "
        "completion against a 0.676 majority baseline."
    )
    return "\n\n".join([head, table(cols, lines), tail])


def run_dbm_section(cfg) -> dict:
    from monotone_dbm import run_dbm

    return run_dbm(cfg)


# name -> (run(cfg) -> dict, markdown(dict) -> str); a new section is one line here.
SECTIONS = {
    "mondeq": (run_mondeq, mondeq_markdown),
    "dbm": (run_dbm_section, dbm_markdown),
}


def main(cfg):
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
    stem = "monotone_quick" if cfg.quick else "monotone"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(cfg).items() if k != "out"}
    record = {"config": config, "versions": env, "sections": results}
    (out / f"{stem}.json").write_text(json.dumps(finite(record), indent=1))
    md = [
        "# Monotone DEQs",
        "What is measured and how: the docstring of `benchmarks/monotone.py`.",
        f"Config: `{json.dumps(config)}`; load average"
        f" {env['loadavg_at_start'][0]:.1f} at start, {env['loadavg_at_end'][0]:.1f}"
        f" at end; total {env['wall_s']:.0f} s.",
    ]
    for name, res in results.items():
        md.append(f"## {name} ({res['wall_s']:.0f} s)")
        md.append(SECTIONS[name][1](res))
    (out / f"{stem}.md").write_text("\n\n".join(md) + "\n")
    print("\n" + "\n\n".join(md[3:]))


if __name__ == "__main__":
    main(CFG)
