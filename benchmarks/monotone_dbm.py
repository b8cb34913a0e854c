"""Monotone DBM vs an RBM on joint completion and classification of digits.

Section of benchmarks/monotone.py (`run_dbm`); runs on its own too:
`python benchmarks/monotone_dbm.py [--quick]`.

Data: scikit-learn digits, each pixel binned into 4 intensity categories. Both models
see the 64 pixel variables and the label; during training each pixel is observed with
probability 0.4 and the label never. The monotone DBM's loss is a focal loss (exponent
--dbm-gamma, default 0: cross-entropy) on the missing pixels with weight
--dbm-pixel-weight (default 0.9) plus the label's cross-entropy with the rest. The
paper's choice, 1/2 focal (exponent 2) + 1/2 cross-entropy, is
`--dbm-gamma 2 --dbm-pixel-weight 0.5`. Evaluation: classification with all pixels and
with 40 % of them observed, and per-pixel accuracy of the completed pixels against
the per-pixel-majority baseline.
"""

import argparse
import json
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jaxdeq
import jaxdeq.data
from jaxdeq import monotone


BINS = 4
PIXELS = 64
CLASSES = 10


def binned_digits(seed=0):
    x, y, xt, yt = jaxdeq.data.load_digits(seed=seed, standardise=False)
    to_bins = lambda a: np.minimum(a // 4, BINS - 1).astype(np.int32)
    return to_bins(x), y, to_bins(xt), yt


def _masks(key, batch, fraction):
    return jr.bernoulli(key, fraction, (batch, PIXELS))


# ---------------------------------------------------------------- monotone DBM


def dbm_groups(hidden):
    return ((PIXELS, BINS), (hidden, BINS), (1, CLASSES))


def _dbm_inputs(model, pixels, observed_pixels, label_observed, labels):
    hidden = model.num_groups - PIXELS - 1
    cats = jnp.concatenate(
        [
            pixels,
            -jnp.ones((hidden,), jnp.int32),
            jnp.where(label_observed, labels, -1)[None],
        ]
    )
    values = monotone.one_hot_groups(cats, model.groups)
    observed = jnp.concatenate(
        [observed_pixels, jnp.zeros((hidden,), bool), jnp.asarray(label_observed)[None]]
    )
    return values.astype(model.A.dtype), observed


def _dbm_predict(model, pixels, observed_pixels):
    values, observed = _dbm_inputs(model, pixels, observed_pixels, False, 0)
    q, report = model(values, observed)
    pixel_probs = q[: PIXELS * BINS].reshape(PIXELS, BINS)
    label_probs = q[-CLASSES:]
    return pixel_probs, label_probs, report


def _focal(probs, target, gamma=2.0):
    p = jnp.take_along_axis(probs, target[..., None], axis=-1)[..., 0]
    p = jnp.clip(p, 1e-7, 1.0)
    if gamma == 0:  # (1 - p) ** 0 has a NaN derivative at p = 1
        return -jnp.log(p)
    return -((1 - p) ** gamma) * jnp.log(p)


def _loss(model, pixels, labels, observed_pixels, gamma, pixel_weight):
    pixel_probs, label_probs, report = jax.vmap(_dbm_predict, in_axes=(None, 0, 0))(
        model, pixels, observed_pixels
    )
    missing = jnp.invert(observed_pixels).astype(pixel_probs.dtype)
    focal = jnp.sum(_focal(pixel_probs, pixels, gamma) * missing) / jnp.maximum(
        jnp.sum(missing), 1
    )
    label_p = jnp.take_along_axis(label_probs, labels[:, None], axis=1)[:, 0]
    ce = -jnp.mean(jnp.log(jnp.clip(label_p, 1e-7, 1.0)))
    return pixel_weight * focal + (1 - pixel_weight) * ce, report.num_steps


def train_dbm(
    data,
    *,
    hidden,
    epochs,
    batch,
    lr,
    seed,
    solver,
    gamma=2.0,
    margin=0.1,
    adjoint=None,
    rank=None,
    pixel_weight=0.5,
):
    x, y, _, _ = data
    key = jr.PRNGKey(seed)
    mkey, key = jr.split(key)
    model = monotone.MonotoneDBM(
        dbm_groups(hidden),
        margin=margin,
        rank=rank,
        solver=solver,
        adjoint=adjoint or jaxdeq.SplittingAdjoint(rtol=1e-4, max_steps=500),
        max_steps=200,
        key=mkey,
    )
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, pixels, labels, key):
        observed = _masks(key, pixels.shape[0], 0.4)
        (loss, steps), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(
            model, pixels, labels, observed, gamma, pixel_weight
        )
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss, jnp.mean(steps)

    n = x.shape[0]
    history = []
    for epoch in range(epochs):
        key, pkey = jr.split(key)
        order = np.asarray(jr.permutation(pkey, n))
        for i in range(0, n - batch + 1, batch):
            key, mkey = jr.split(key)
            idx = order[i : i + batch]
            model, state, loss, steps = step(
                model, state, jnp.asarray(x[idx]), jnp.asarray(y[idx]), mkey
            )
        history.append((float(loss), float(steps)))
        if not np.isfinite(history[-1][0]):
            raise FloatingPointError(f"monotone DBM training diverged at epoch {epoch}")
    return model, history


def evaluate_dbm(model, data, seed):
    _, _, xt, yt = data
    predict = eqx.filter_jit(jax.vmap(_dbm_predict, in_axes=(None, 0, 0)))
    pixels, labels = jnp.asarray(xt), jnp.asarray(yt)
    all_obs = jnp.ones(pixels.shape, bool)
    part_obs = _masks(jr.PRNGKey(seed + 1), pixels.shape[0], 0.4)
    _, label_all, _ = predict(model, pixels, all_obs)
    pixel_part, label_part, report_part = predict(model, pixels, part_obs)
    missing = jnp.invert(part_obs)
    completed = jnp.argmax(pixel_part, -1)
    return {
        "accuracy_all_pixels": float(jnp.mean(jnp.argmax(label_all, -1) == labels)),
        "accuracy_40pct_pixels": float(jnp.mean(jnp.argmax(label_part, -1) == labels)),
        "completion_accuracy": float(
            jnp.sum((completed == pixels) & missing) / jnp.sum(missing)
        ),
        "mean_steps": float(jnp.mean(report_part.num_steps)),
        "failed_solves": int(jnp.sum(~report_part.successful)),
        "mask": part_obs,
    }


# ------------------------------------------------------------------------- RBM


class RBM(eqx.Module):
    """Categorical visible units (64 pixels x 4 bins + a 10-way label), binary
    hidden units."""

    W: jax.Array
    b: jax.Array
    c: jax.Array

    def __init__(self, hidden, key):
        nv = PIXELS * BINS + CLASSES
        self.W = 0.01 * jr.normal(key, (nv, hidden))
        self.b = jnp.zeros(nv)
        self.c = jnp.zeros(hidden)


def _visible_softmax(logits):
    pix = jax.nn.softmax(logits[: PIXELS * BINS].reshape(PIXELS, BINS), -1)
    lab = jax.nn.softmax(logits[PIXELS * BINS :])
    return jnp.concatenate([pix.reshape(-1), lab])


def _rbm_visible(pixels, label):
    return jnp.concatenate(
        [jax.nn.one_hot(pixels, BINS).reshape(-1), jax.nn.one_hot(label, CLASSES)]
    )


def _sample_visible(key, logits):
    k1, k2 = jr.split(key)
    pix = jr.categorical(k1, logits[: PIXELS * BINS].reshape(PIXELS, BINS))
    lab = jr.categorical(k2, logits[PIXELS * BINS :])
    return _rbm_visible(pix, lab)


def _rbm_cd_grads(rbm, v0, key):
    k1, k2 = jr.split(key)
    ph0 = jax.nn.sigmoid(v0 @ rbm.W + rbm.c)
    h0 = jr.bernoulli(k1, ph0).astype(v0.dtype)
    v1 = _sample_visible(k2, rbm.W @ h0 + rbm.b)
    ph1 = jax.nn.sigmoid(v1 @ rbm.W + rbm.c)
    return (
        jnp.outer(v0, ph0) - jnp.outer(v1, ph1),
        v0 - v1,
        ph0 - ph1,
    )


def _rbm_infer(rbm, pixels, observed_pixels, steps=30):
    """Mean-field completion: alternate hidden and missing-visible updates."""
    v_obs = _rbm_visible(pixels, 0)
    mask = jnp.concatenate(
        [jnp.repeat(observed_pixels, BINS), jnp.zeros(CLASSES, bool)]
    )
    v = jnp.where(mask, v_obs, _visible_softmax(rbm.b))

    def body(v, _):
        h = jax.nn.sigmoid(v @ rbm.W + rbm.c)
        v = jnp.where(mask, v_obs, _visible_softmax(rbm.W @ h + rbm.b))
        return v, None

    v, _ = jax.lax.scan(body, v, None, length=steps)
    return v[: PIXELS * BINS].reshape(PIXELS, BINS), v[PIXELS * BINS :]


def train_rbm(data, *, hidden, epochs, batch, lr, seed):
    x, y, _, _ = data
    key = jr.PRNGKey(seed)
    mkey, key = jr.split(key)
    rbm = RBM(hidden, mkey)

    @eqx.filter_jit
    def step(rbm, pixels, labels, key):
        v0 = jax.vmap(_rbm_visible)(pixels, labels)
        keys = jr.split(key, pixels.shape[0])
        gW, gb, gc = jax.vmap(_rbm_cd_grads, in_axes=(None, 0, 0))(rbm, v0, keys)
        return eqx.tree_at(
            lambda r: (r.W, r.b, r.c),
            rbm,
            (
                rbm.W + lr * jnp.mean(gW, 0),
                rbm.b + lr * jnp.mean(gb, 0),
                rbm.c + lr * jnp.mean(gc, 0),
            ),
        )

    n = x.shape[0]
    for _ in range(epochs):
        key, pkey = jr.split(key)
        order = np.asarray(jr.permutation(pkey, n))
        for i in range(0, n - batch + 1, batch):
            key, skey = jr.split(key)
            idx = order[i : i + batch]
            rbm = step(rbm, jnp.asarray(x[idx]), jnp.asarray(y[idx]), skey)
    return rbm


def evaluate_rbm(rbm, data, mask):
    _, _, xt, yt = data
    infer = eqx.filter_jit(jax.vmap(_rbm_infer, in_axes=(None, 0, 0)))
    pixels, labels = jnp.asarray(xt), jnp.asarray(yt)
    _, label_all = infer(rbm, pixels, jnp.ones(pixels.shape, bool))
    pixel_part, label_part = infer(rbm, pixels, mask)
    missing = jnp.invert(mask)
    completed = jnp.argmax(pixel_part, -1)
    return {
        "accuracy_all_pixels": float(jnp.mean(jnp.argmax(label_all, -1) == labels)),
        "accuracy_40pct_pixels": float(jnp.mean(jnp.argmax(label_part, -1) == labels)),
        "completion_accuracy": float(
            jnp.sum((completed == pixels) & missing) / jnp.sum(missing)
        ),
    }


def majority_baseline(data, mask):
    x, _, xt, _ = data
    majority = np.array(
        [np.bincount(x[:, j], minlength=BINS).argmax() for j in range(PIXELS)]
    )
    missing = ~np.asarray(mask)
    return float(np.sum((xt == majority[None]) & missing) / np.sum(missing))


def run_dbm(args) -> dict:
    quick = getattr(args, "quick", False)
    seed = getattr(args, "seed", 0)
    data = binned_digits(seed)
    cfg = dict(
        hidden=8 if quick else getattr(args, "dbm_hidden", 32),
        epochs=1 if quick else getattr(args, "dbm_epochs", 30),
        batch=64,
        gamma=getattr(args, "dbm_gamma", 0.0),
        margin=getattr(args, "dbm_margin", 0.1),
        lr=getattr(args, "dbm_lr", 1e-2),
        rank=getattr(args, "dbm_rank", None),
        pixel_weight=getattr(args, "dbm_pixel_weight", 0.9),
    )
    solver = jaxdeq.PeacemanRachford(rtol=1e-3, atol=1e-5, alpha=1.0)
    t0 = time.perf_counter()
    adjoint_name = getattr(args, "dbm_adjoint", "implicit")
    adjoint = {
        "splitting": jaxdeq.SplittingAdjoint(rtol=1e-4, max_steps=500),
        "implicit": jaxdeq.ImplicitAdjoint(),
    }[adjoint_name]
    dbm, history = train_dbm(data, seed=seed, solver=solver, adjoint=adjoint, **cfg)
    dbm_time = time.perf_counter() - t0
    dbm_eval = evaluate_dbm(dbm, data, seed)
    x, y, _, _ = data
    train_part = (x, y, x[:359], y[:359])
    dbm_eval["train_completion_accuracy"] = evaluate_dbm(dbm, train_part, seed)[
        "completion_accuracy"
    ]
    mask = dbm_eval.pop("mask")
    paper = None
    if not quick:
        # The paper's loss (1/2 focal with exponent 2 + 1/2 label cross-entropy),
        # otherwise the same run, for comparison.
        paper_cfg = {**cfg, "gamma": 2.0, "pixel_weight": 0.5}
        t0 = time.perf_counter()
        paper_dbm, _ = train_dbm(
            data, seed=seed, solver=solver, adjoint=adjoint, **paper_cfg
        )
        paper = evaluate_dbm(paper_dbm, data, seed)
        paper.pop("mask")
        paper["train_seconds"] = time.perf_counter() - t0
    if getattr(args, "skip_rbm", False):
        return {"config": {**cfg, "adjoint": adjoint_name}, "monotone_dbm": dbm_eval}
    t0 = time.perf_counter()
    rbm = train_rbm(
        data,
        hidden=16 if quick else 128,
        epochs=1 if quick else 60,
        batch=32,
        lr=0.05,
        seed=seed,
    )
    rbm_time = time.perf_counter() - t0
    rbm_eval = evaluate_rbm(rbm, data, mask)
    return {
        "config": {
            **cfg,
            "solver": "PeacemanRachford(alpha=1, rtol=1e-3)",
            "adjoint": adjoint_name,
        },
        "monotone_dbm_paper_loss": paper,
        "monotone_dbm": {
            **dbm_eval,
            "train_seconds": dbm_time,
            "final_loss": history[-1][0],
        },
        "rbm": {**rbm_eval, "train_seconds": rbm_time},
        "majority_completion_accuracy": majority_baseline(data, mask),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dbm-epochs", type=int, default=30)
    parser.add_argument("--dbm-hidden", type=int, default=32)
    parser.add_argument("--dbm-gamma", type=float, default=0.0)
    parser.add_argument("--dbm-margin", type=float, default=0.1)
    parser.add_argument("--dbm-lr", type=float, default=1e-2)
    parser.add_argument("--dbm-rank", type=int, default=None)
    parser.add_argument("--dbm-pixel-weight", type=float, default=0.9)
    parser.add_argument(
        "--dbm-adjoint", choices=("implicit", "splitting"), default="implicit"
    )
    parser.add_argument("--skip-rbm", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    result = run_dbm(args)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
