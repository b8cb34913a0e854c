"""Section "digits" of benchmarks/continuous.py: HomoODE, neural ODEs and a DEQ on
scikit-learn's 8x8 digits.

Data: `jaxdeq.data.load_digits(seed)` (80/20 seeded split, standardised with training
statistics). Every model is x (64) -> tanh(Linear(64, H)) -> block -> Linear(., 10),
float32, the encoder and head initialised from the same keys for all models, trained
with optax adam (--digits-lr, --digits-epochs, batch --digits-batch, the same data
order for all; the last partial batch is dropped so the jitted step never
recompiles) on the mean cross-entropy. H = --digits-hidden (32); vector fields and
the DEQ cell have two hidden layers of --digits-width (64), tanh. Blocks:

- NODE: `jaxdeq.ode.NeuralODE(ConcatField(H, 0, width))`, y0 = the encoding;
- ANODE: the same with `augment=A` (--digits-augment, 8) zero channels, the field
  and the head on H + A;
- HomoODE: `jaxdeq.ode.HomoODE(ConcatField(H, H, width), initial_point=0)` with the
  encoding as the field's input, the shared initial point trained by gradient and,
  after every step, moved by `update_initial_point(z, momentum=0.1)` towards the
  batch's solutions;
- HomoODE, fixed z0: the same with the initial point left at zero (excluded from the
  optimised parameters and never updated);
- DEQ: `jaxdeq.DEQ(cell, y0=0)` with cell(z, x) = tanh(MLP([z; x])) (same widths),
  `jaxdeq.Anderson(rtol=1e-4, atol=1e-6)` forward, `jaxdeq.ImplicitAdjoint()`
  backward, 50 steps at most (the DEQ defaults).

All ODE blocks use `diffrax.Dopri5()` with `PIDController(rtol=atol=1e-3)` (HomoODE's
defaults, the authors') and `RecursiveCheckpointAdjoint` on t in [0, 1].

Measured per model. Test accuracy of the final model (whole test set, one vmapped
batch). Forward NFE per sample: mean over the test set of `report.num_fn_evals`
(ODEs: exact for Dopri5, see `jaxdeq.ode.NeuralODE`; DEQ: the solver's count).
Backward NFE per sample, ODEs: a copy of the model whose vector field calls a
`jax.debug.callback` counter; for each of --digits-count-samples training samples
alone (no vmap, so each count is that sample's own), one jitted value_and_grad of
the sample's cross-entropy w.r.t. the trained parameters; backward = callback calls
during it minus the same call's forward `report.num_fn_evals`; the mean over the
samples.
diffrax's checkpointed backward evaluates every forward stage twice (its Runge-Kutta
stage loop is checkpointed too) and takes one VJP per stage, so this is about twice
the forward count. DEQ: the number of backward solver steps from the
`jaxdeq.BackwardStats` probe, one VJP of the cell each (the cell itself is evaluated
once more, at z*, to linearise it: the callback count, in the JSON), mean over the
last epoch's training samples. Training-step memory: XLA's
compiled memory analysis of the jitted train step (`temp_size_in_bytes`;
`jax.jit(step).lower(...).compile().memory_analysis()`). Wall time per epoch: the
median over epochs of the summed step times (blocking on the loss; compile excluded:
the step is compiled ahead of time and the compiled executable is called). Per epoch
(into the JSON, for plots): mean loss, forward NFE mean / max over the epoch's
training samples, backward NFE (as above, after the epoch), test accuracy, and the
fraction of solves reported successful.
"""

import statistics
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax

import jaxdeq
import jaxdeq.data
from jaxdeq.ode import ConcatField, HomoODE, NeuralODE


MODELS = ("NODE", "ANODE", "HomoODE", "HomoODE, fixed z0", "DEQ")


class Counting(eqx.Module):
    """A vector field or cell that reports each call to a host-side counter."""

    fn: eqx.Module
    counter: list = eqx.field(static=True)

    def __call__(self, *args):
        jax.debug.callback(self._tick, args[0])
        return self.fn(*args)

    def _tick(self, _):
        self.counter[0] += 1


class TanhCell(eqx.Module):
    """cell(z, x) = tanh(L3 tanh(L2 tanh(L1 [z; x]))): the shape of ConcatField's MLP.

    Built from Linear layers rather than `eqx.nn.MLP`: `jaxdeq.DEQ` checks its cell
    with `jax.eval_shape`, which rejects the MLP's activation-function fields.
    """

    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, hidden, width, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.layers = (
            eqx.nn.Linear(2 * hidden, width, dtype=jnp.float32, key=k1),
            eqx.nn.Linear(width, width, dtype=jnp.float32, key=k2),
            eqx.nn.Linear(width, hidden, dtype=jnp.float32, key=k3),
        )

    def __call__(self, z, x):
        h = jnp.concatenate([z, x])
        for layer in self.layers:
            h = jnp.tanh(layer(h))
        return h


class Classifier(eqx.Module):
    encoder: eqx.nn.Linear
    block: eqx.Module
    head: eqx.nn.Linear
    kind: str = eqx.field(static=True)

    def __call__(self, x, probe=None):
        h = jnp.tanh(self.encoder(x))
        if self.kind == "DEQ":
            z, report = self.block(h, backward_stats=probe)
            nfe = report.num_fn_evals
            ok = report.successful
        else:
            z, report = self.block(h)
            nfe = report.num_fn_evals
            ok = report.successful
        return self.head(z), z, nfe, ok


def _ode_kwargs(tol):
    return dict(
        solver=dfx.Dopri5(),
        stepsize_controller=dfx.PIDController(rtol=tol, atol=tol),
        adjoint=dfx.RecursiveCheckpointAdjoint(checkpoints=32),  # NeuralODE's default
    )


def make_model(kind, hidden, width, augment, tol, key):
    k_enc, k_head, k_block = jr.split(key, 3)
    encoder = eqx.nn.Linear(64, hidden, dtype=jnp.float32, key=k_enc)
    out = hidden
    if kind == "NODE":
        field = ConcatField(hidden, 0, width, dtype=jnp.float32, key=k_block)
        block = NeuralODE(field, **_ode_kwargs(tol))
    elif kind == "ANODE":
        out = hidden + augment
        field = ConcatField(out, 0, width, dtype=jnp.float32, key=k_block)
        block = NeuralODE(field, augment=augment, **_ode_kwargs(tol))
    elif kind.startswith("HomoODE"):
        field = ConcatField(hidden, hidden, width, dtype=jnp.float32, key=k_block)
        block = HomoODE(field, jnp.zeros(hidden, jnp.float32), **_ode_kwargs(tol))
    else:
        block = jaxdeq.DEQ(
            TanhCell(hidden, width, key=k_block),
            y0=jnp.zeros(hidden, jnp.float32),
            solver=jaxdeq.Anderson(rtol=1e-4, atol=1e-6),
            adjoint=jaxdeq.ImplicitAdjoint(),
        )
    head = eqx.nn.Linear(out, 10, dtype=jnp.float32, key=k_head)
    return Classifier(encoder, block, head, kind)


def trainable(model):
    """The filter spec of the optimised parameters: every float array but the fixed
    initial points (HomoODE with fixed z0; the DEQ's y0, whose gradient is zero)."""
    spec = jtu.tree_map(eqx.is_inexact_array, model)
    if model.kind == "HomoODE, fixed z0":
        spec = eqx.tree_at(lambda m: m.block.initial_point, spec, False)
    if model.kind == "DEQ":
        spec = eqx.tree_at(lambda m: m.block.y0, spec, False)
    return spec


def n_params(model):
    return sum(x.size for x in jtu.tree_leaves(eqx.filter(model, trainable(model))))


def with_counter(model, counter):
    if model.kind == "DEQ":
        return eqx.tree_at(
            lambda m: m.block.cell, model, Counting(model.block.cell, counter)
        )
    return eqx.tree_at(
        lambda m: m.block.vector_field,
        model,
        Counting(model.block.vector_field, counter),
    )


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(model, opt):
    """A jittable train step on (arrays, opt_state, x, y) and the arrays."""
    arrays, static = eqx.partition(model, eqx.is_array)
    spec = trainable(model)
    deq = model.kind == "DEQ"
    learn_z0 = model.kind == "HomoODE"

    def step(arrays, opt_state, x, y):
        model = eqx.combine(arrays, static)
        diff, nondiff = eqx.partition(model, spec)

        def loss(diff, probe):
            m = eqx.combine(diff, nondiff)
            logits, z, nfe, ok = jax.vmap(m)(x, probe)
            return _ce(logits, y), (z, nfe, ok)

        probe = jaxdeq.BackwardStats.probe((x.shape[0],)) if deq else None
        grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        (value, (z, nfe, ok)), (grads, bstats) = grad_fn(diff, probe)
        updates, opt_state = opt.update(grads, opt_state, diff)
        model = eqx.apply_updates(model, updates)
        if learn_z0:
            model = eqx.tree_at(
                lambda m: m.block, model, model.block.update_initial_point(z, 0.1)
            )
        bwd = bstats.num_steps if deq else jnp.full(x.shape[:1], jnp.nan)
        return eqx.filter(model, eqx.is_array), opt_state, value, nfe, bwd, ok

    return step, arrays, static


def make_eval(static):
    def evaluate(arrays, x, y):
        model = eqx.combine(arrays, static)
        logits, _, nfe, ok = jax.vmap(model)(x)
        return jnp.mean(jnp.argmax(logits, -1) == y), nfe, ok

    return evaluate


def make_counter(model):
    """A function (arrays, xs, ys) -> per-sample (forward nfe, callback calls of the
    forward + backward) with arrays the trained model's arrays."""
    counter = [0]
    plain_static = eqx.partition(model, eqx.is_array)[1]
    counting = with_counter(model, counter)
    spec = trainable(counting)
    _, static = eqx.partition(counting, eqx.is_array)
    deq = model.kind == "DEQ"

    def grad_one(arrays, x, y):
        m = eqx.combine(arrays, static)
        diff, nondiff = eqx.partition(m, spec)

        def loss(diff, probe):
            logits, _, nfe, _ = eqx.combine(diff, nondiff)(x, probe)
            return _ce(logits[None], y[None]), nfe

        probe = jaxdeq.BackwardStats.probe() if deq else None
        (_, nfe), (_, bstats) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            diff, probe
        )
        return nfe, bstats.num_steps if deq else jnp.zeros(())

    compiled = [None]

    def count(arrays, xs, ys):
        # the trained model's arrays in the counting model's structure
        trained = eqx.combine(arrays, plain_static)
        arrays = eqx.filter(with_counter(trained, counter), eqx.is_array)
        if compiled[0] is None:
            compiled[0] = jax.jit(grad_one).lower(arrays, xs[0], ys[0]).compile()
        fwd, calls, bwd_steps = [], [], []
        for x, y in zip(xs, ys):
            jax.effects_barrier()
            counter[0] = 0
            nfe, steps = compiled[0](arrays, x, y)
            jax.block_until_ready(nfe)
            jax.effects_barrier()
            fwd.append(int(nfe))
            calls.append(counter[0])
            bwd_steps.append(float(steps))
        return np.array(fwd), np.array(calls), np.array(bwd_steps)

    return count


def train_and_measure(kind, data, cfg):
    x_tr, y_tr, x_te, y_te = data
    key = jr.PRNGKey(cfg["seed"])
    model = make_model(
        kind, cfg["hidden"], cfg["width"], cfg["augment"], cfg["tol"], key
    )
    opt = optax.adam(cfg["lr"])
    opt_state = opt.init(eqx.filter(model, trainable(model)))
    step, arrays, static = make_step(model, opt)
    batch = min(cfg["batch"], len(x_tr))
    t0 = time.perf_counter()
    compiled = (
        jax.jit(step).lower(arrays, opt_state, x_tr[:batch], y_tr[:batch]).compile()
    )
    evaluate = jax.jit(make_eval(static)).lower(arrays, x_te, y_te).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    count = make_counter(model)
    xs_c, ys_c = x_tr[: cfg["count_samples"]], y_tr[: cfg["count_samples"]]

    rng = np.random.default_rng(cfg["seed"])
    per_epoch = len(x_tr) // batch
    history = []
    for epoch in range(cfg["epochs"]):
        order = rng.permutation(len(x_tr))
        losses, fwd, bwd, oks, step_s = [], [], [], [], []
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            t = time.perf_counter()
            arrays, opt_state, value, nfe, b, ok = compiled(
                arrays, opt_state, x_tr[idx], y_tr[idx]
            )
            value = float(value)  # blocks
            step_s.append(time.perf_counter() - t)
            losses.append(value)
            fwd.append(np.asarray(nfe))
            bwd.append(np.asarray(b))
            oks.append(np.asarray(ok))
        fwd, bwd, oks = np.concatenate(fwd), np.concatenate(bwd), np.concatenate(oks)
        acc, _, _ = evaluate(arrays, x_te, y_te)
        h = dict(
            epoch=epoch + 1,
            loss=float(np.mean(losses)),
            epoch_s=float(sum(step_s)),
            fwd_nfe_mean=float(fwd.mean()),
            fwd_nfe_max=int(fwd.max()),
            train_success=float(oks.mean()),
            test_accuracy=float(acc),
        )
        if kind == "DEQ":
            h["bwd_nfe_mean"] = float(bwd.mean())
        else:
            c_fwd, c_calls, _ = count(arrays, xs_c, ys_c)
            h["bwd_nfe_mean"] = float((c_calls - c_fwd).mean())
        history.append(h)
        if epoch % 5 == 0 or epoch == cfg["epochs"] - 1:
            print(
                f"    {kind:18s} epoch {epoch + 1:3d} loss {h['loss']:.4f} test acc"
                f" {h['test_accuracy']:.4f} NFE fwd {h['fwd_nfe_mean']:.1f}"
                f" (max {h['fwd_nfe_max']}) bwd {h['bwd_nfe_mean']:.1f}"
                f" {h['epoch_s']:.2f} s",
                flush=True,
            )
    acc, nfe, ok = evaluate(arrays, x_te, y_te)
    nfe, ok = np.asarray(nfe), np.asarray(ok)
    c_fwd, c_calls, c_steps = count(arrays, xs_c, ys_c)
    row = dict(
        model=kind,
        params=n_params(model),
        test_accuracy=float(acc),
        test_success=float(ok.mean()),
        fwd_nfe_mean=float(nfe.mean()),
        fwd_nfe_max=int(nfe.max()),
        step_temp_bytes=None if mem is None else mem.temp_size_in_bytes,
        step_output_bytes=None if mem is None else mem.output_size_in_bytes,
        epoch_s_median=statistics.median(h["epoch_s"] for h in history),
        compile_s=compile_s,
        final_loss=history[-1]["loss"],
        history=history,
        count_samples=len(xs_c),
        callback_fwd_plus_bwd_mean=float(c_calls.mean()),
        count_fwd_nfe_mean=float(c_fwd.mean()),
    )
    if kind == "DEQ":
        row["bwd_nfe_mean"] = history[-1]["bwd_nfe_mean"]
        row["bwd_unit"] = "VJPs (BackwardStats.num_steps, last epoch's batches)"
        row["probe_bwd_steps_count_samples"] = float(c_steps.mean())
        row["callback_cell_calls_in_bwd"] = float((c_calls - c_fwd).mean())
    else:
        row["bwd_nfe_mean"] = float((c_calls - c_fwd).mean())
        row["bwd_unit"] = "field evaluations (callback count - report.num_fn_evals)"
    if kind == "HomoODE":
        z0 = np.asarray(eqx.combine(arrays, static).block.initial_point)
        row["initial_point_norm"] = float(np.linalg.norm(z0))
    return row


def run_digits(
    epochs=30,
    batch=128,
    lr=3e-3,
    hidden=32,
    width=64,
    augment=8,
    tol=1e-3,
    count_samples=32,
    seed=0,
    subset=None,
    models=MODELS,
):
    x_tr, y_tr, x_te, y_te = jaxdeq.data.load_digits(seed=seed)
    if subset:
        x_tr, y_tr = x_tr[: subset[0]], y_tr[: subset[0]]
        x_te, y_te = x_te[: subset[1]], y_te[: subset[1]]
    cfg = dict(
        epochs=epochs,
        batch=batch,
        lr=lr,
        hidden=hidden,
        width=width,
        augment=augment,
        tol=tol,
        count_samples=count_samples,
        seed=seed,
    )
    rows = []
    for kind in models:
        print(f"  model {kind}", flush=True)
        rows.append(train_and_measure(kind, (x_tr, y_tr, x_te, y_te), cfg))
    return dict(
        config=cfg,
        data=dict(
            source=f"scikit-learn digits via jaxdeq.data.load_digits(seed={seed})",
            train=len(x_tr),
            test=len(x_te),
        ),
        rows=rows,
    )


def _table(cols, lines):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
    return "\n".join(out)


def digits_markdown(res) -> str:
    c, d = res["config"], res["data"]
    head = (
        f"{d['source']}: {d['train']} training, {d['test']} test samples. Encoder "
        f"tanh(Linear(64, {c['hidden']})), blocks with two hidden layers of "
        f"{c['width']} (tanh), head Linear(·, 10); adam {c['lr']:g}, {c['epochs']} "
        f"epochs, batch {c['batch']}, seed {c['seed']}. ODEs: Dopri5, rtol = atol = "
        f"{c['tol']:g}, RecursiveCheckpointAdjoint; DEQ: Anderson (rtol 1e-4), "
        "ImplicitAdjoint."
    )
    lines = []
    for r in res["rows"]:
        lines.append(
            [
                r["model"],
                r["params"],
                f"{r['test_accuracy']:.4f}",
                f"{r['fwd_nfe_mean']:.1f} (max {r['fwd_nfe_max']})",
                f"{r['bwd_nfe_mean']:.1f}" + (" VJPs" if r["model"] == "DEQ" else ""),
                "—"
                if r["step_temp_bytes"] is None
                else f"{r['step_temp_bytes'] / 2**20:.2f}",
                f"{r['epoch_s_median']:.2f}",
                f"{r['final_loss']:.4f}",
                f"{r['test_success']:.3f}",
            ]
        )
    cols = [
        "model",
        "params",
        "test acc",
        "fwd NFE / sample (test)",
        "bwd NFE / sample",
        "train-step temp MiB",
        "s / epoch",
        "final train loss",
        "solves successful (test)",
    ]
    notes = (
        f"Backward NFE: ODEs, vector-field calls counted by a debug callback during "
        f"one value_and_grad per sample ({res['rows'][0]['count_samples']} training "
        "samples, one at a time) minus that call's forward `report.num_fn_evals`; "
        "DEQ, the "
        "implicit backward's solver steps (one VJP each) from `jaxdeq.BackwardStats`. "
        "NFE per epoch is in the JSON (`history`)."
    )
    return "\n\n".join([head, _table(cols, lines), notes])
