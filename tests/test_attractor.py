"""Attractor refiners: known fixed points, backward-mode formulas, the injection,
budgets, memory, internalization, and the offline Sudoku and text data."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
import pytest

import jaxdeq
from jaxdeq.attractor import (
    AttentionBlock,
    AttractorRefiner,
    causal_mask,
    evaluate_budgets,
    GatedRefiner,
    TokenBackbone,
    TokenDecoder,
)
from jaxdeq.data import (
    count_sudoku_solutions,
    decode_text,
    encode_text,
    load_stdlib_text,
    solve_sudoku,
    sudoku_augment,
    sudoku_is_solution,
    sudoku_peers,
    sudoku_puzzles,
)

from .helpers import contraction


N = 6
TIGHT = jaxdeq.Anderson(rtol=1e-12, atol=1e-12)


class Affine(eqx.Module):
    a: jax.Array
    b: jax.Array

    def __call__(self, u):
        return self.a @ u + self.b


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return self.w @ x


@pytest.fixture
def affine(getkey):
    a = contraction(getkey(), N, norm=0.6, dtype=jnp.float64)
    b = jr.normal(getkey(), (N,), jnp.float64)
    w = jr.normal(getkey(), (N, 3), jnp.float64)
    x = jr.normal(getkey(), (3,), jnp.float64)
    v = jr.normal(getkey(), (N,), jnp.float64)
    return Affine(a, b), Linear(w), x, v


def _model(refiner, backbone, **kwargs):
    kwargs.setdefault("solver", TIGHT)
    kwargs.setdefault("max_steps", 200)
    return AttractorRefiner(backbone, refiner, **kwargs)


def _closed_form(refiner, c):
    eye = np.eye(N)
    a, b = np.asarray(refiner.a), np.asarray(refiner.b)
    return np.linalg.solve(eye - a, c + a @ c + b)


@pytest.mark.parametrize(
    "solver",
    [
        TIGHT,
        jaxdeq.Broyden(rtol=1e-12, atol=1e-12),
        optx.FixedPointIteration(rtol=1e-12, atol=1e-12),
    ],
)
@pytest.mark.parametrize("min_steps", [1, 5])
def test_affine_refiner_reaches_closed_form(affine, solver, min_steps):
    # F(y; c) = c + A(y + c) + b is affine: y* = (I - A)^-1 ((I + A) c + b).
    refiner, backbone, x, _ = affine
    model = _model(refiner, backbone, solver=solver, min_steps=min_steps)
    y, report = model(x)
    c = np.asarray(backbone(x))
    np.testing.assert_allclose(y, _closed_form(refiner, c), rtol=1e-9, atol=1e-10)
    assert isinstance(report, jaxdeq.Report)
    assert bool(report.successful)
    assert int(report.num_steps) >= min_steps
    assert float(report.rel_residual) < 1e-9
    expected = np.linalg.norm(np.asarray(y) - c) / np.linalg.norm(c)
    np.testing.assert_allclose(report.extra["internalization"], expected, rtol=1e-12)


def _loss_grads(model, x, v):
    def loss(model):
        y, _ = model(x)
        return jnp.dot(v, y)

    return eqx.filter_grad(loss)(model)


@pytest.mark.slow
def test_backward_modes_match_their_formulas(affine):
    # For the affine map, J = A, dF/db = I and dF/dc = I + A, so the gradient of
    # L = <v, y*> with respect to b is w for each mode's adjoint vector w.
    refiner, backbone, x, v = affine
    a = np.asarray(refiner.a)
    eye = np.eye(N)
    at_v = a.T @ v
    # A clip at half the correction's size, so clipping is active.
    clip_at = 0.5 * np.linalg.norm(at_v) / np.linalg.norm(v)
    cases = {
        jaxdeq.ImplicitAdjoint(linear_solver=jaxdeq.Anderson(rtol=1e-13, atol=0.0)): (
            np.linalg.solve(eye - a.T, v)
        ),
        jaxdeq.JacobianFreeAdjoint(): v,
        jaxdeq.NeumannAdjoint(terms=1): v + at_v,
        jaxdeq.NeumannAdjoint(terms=2): v + at_v + a.T @ at_v,
        # Clipped: the correction A^T v is rescaled to norm clip_at |v|.
        jaxdeq.NeumannAdjoint(terms=1, clip=float(clip_at)): v + 0.5 * at_v,
        # A clip larger than the correction changes nothing.
        jaxdeq.NeumannAdjoint(terms=1, clip=float(4 * clip_at)): v + at_v,
        # Two undamped steps from y*: d z_2 / d b = I + A.
        jaxdeq.PhantomAdjoint(steps=2): v + at_v,
        # Damped: z_{i+1} = (1 - t) z_i + t F(z_i); one step gives t I.
        jaxdeq.PhantomAdjoint(steps=1, damping=0.5): 0.5 * v,
    }
    for adjoint, w in cases.items():
        grads = _loss_grads(_model(refiner, backbone, adjoint=adjoint), x, v)
        np.testing.assert_allclose(
            grads.refiner.b, w, rtol=1e-9, atol=1e-11, err_msg=repr(adjoint)
        )
        # dL/dA = w (y* + c)^T: the refiner sees u = y* + c.
        y, _ = _model(refiner, backbone)(x)
        u = np.asarray(y) + np.asarray(backbone(x))
        np.testing.assert_allclose(
            grads.refiner.a, np.outer(w, u), rtol=1e-8, atol=1e-10
        )


def test_implicit_gradient_matches_finite_differences(affine):
    refiner, backbone, x, v = affine
    model = _model(
        refiner,
        backbone,
        adjoint=jaxdeq.ImplicitAdjoint(
            linear_solver=jaxdeq.Anderson(rtol=1e-13, atol=0.0)
        ),
    )

    def loss(model):
        y, _ = model(x)
        return jnp.dot(v, y) + 0.5 * jnp.sum(jnp.tanh(y) ** 2)

    grads = eqx.filter_grad(loss)(model)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    flat_grads, _ = jax.flatten_util.ravel_pytree(
        eqx.filter(grads, eqx.is_inexact_array)
    )
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(6):
        d = rng.standard_normal(flat.shape)
        plus = loss(eqx.combine(unravel(flat + eps * d), static))
        minus = loss(eqx.combine(unravel(flat - eps * d), static))
        fd = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(jnp.dot(flat_grads, d), fd, rtol=1e-6, atol=1e-9)


def test_backbone_gradient_only_through_injection(affine):
    refiner, backbone, x, v = affine
    a = np.asarray(refiner.a)
    eye = np.eye(N)
    implicit = jaxdeq.ImplicitAdjoint(linear_solver=jaxdeq.Anderson(rtol=1e-13, atol=0))
    # Persistent injection: dL/dc = (dF/dc)^T w = (I + A^T) w; the start is stopped,
    # so nothing else reaches the backbone, and dL/dW = (dL/dc) x^T.
    for adjoint, w in (
        (implicit, np.linalg.solve(eye - a.T, v)),
        (jaxdeq.JacobianFreeAdjoint(), v),
    ):
        grads = _loss_grads(_model(refiner, backbone, adjoint=adjoint), x, v)
        dc = (eye + a.T) @ w
        np.testing.assert_allclose(grads.backbone.w, np.outer(dc, x), rtol=1e-9)
    # Initial-state injection: the proposal is only the (stopped) start, so the
    # backbone receives no gradient at all.
    grads = _loss_grads(
        _model(refiner, backbone, adjoint=implicit, injection="initial"), x, v
    )
    assert np.all(np.asarray(grads.backbone.w) == 0)


def test_fixed_point_depends_on_proposal_only_with_persistent_injection(affine, getkey):
    refiner, backbone, x, _ = affine
    x2 = jr.normal(getkey(), x.shape, x.dtype)
    persistent = _model(refiner, backbone)
    y1, _ = persistent(x)
    y2, _ = persistent(x2)
    assert float(jnp.linalg.norm(y1 - y2)) > 1e-2
    initial = _model(refiner, backbone, injection="initial")
    z1, report1 = initial(x)
    z2, report2 = initial(x2)
    # F(y) = A y + b has the unique fixed point (I - A)^-1 b whatever the start.
    expected = np.linalg.solve(np.eye(N) - np.asarray(refiner.a), refiner.b)
    np.testing.assert_allclose(z1, expected, rtol=1e-9)
    np.testing.assert_allclose(z2, expected, rtol=1e-9)
    assert bool(report1.successful) and bool(report2.successful)


def _token_model(key, *, max_steps=16, dim=16, **kwargs):
    k1, k2, k3 = jr.split(key, 3)
    mask = causal_mask(8)
    backbone = TokenBackbone(12, 8, dim, 1, 2, mask, key=k1)
    refiner = GatedRefiner(
        [AttentionBlock(dim, 2, mask, key=k) for k in jr.split(k2, 2)], dim
    )
    decoder = TokenDecoder(dim, 12, key=k3)
    return AttractorRefiner(backbone, refiner, decoder, max_steps=max_steps, **kwargs)


@pytest.mark.slow
def test_tighter_tolerance_never_lowers_iterations(getkey):
    tokens = jr.randint(getkey(), (6, 8), 0, 12)
    model = _token_model(getkey(), max_steps=64)
    steps = []
    for tol in (1e-2, 1e-4, 1e-6, 1e-8):
        model = eqx.tree_at(
            lambda m: m.solver, model, jaxdeq.Anderson(rtol=tol, atol=0.0)
        )
        _, report = jax.vmap(model)(tokens)
        assert bool(jnp.all(report.successful))
        steps.append(np.asarray(report.num_steps))
    for looser, tighter in zip(steps, steps[1:]):
        assert np.all(tighter >= looser)
    assert np.all(steps[-1] > steps[0])


@pytest.mark.slow
def test_budgets_decode_proposal_and_steps(getkey):
    tokens = jr.randint(getkey(), (8,), 0, 12)
    model = _token_model(getkey())
    c = model.backbone(tokens)
    out0, report0 = model(tokens, steps=0)
    np.testing.assert_array_equal(out0, model.decoder(c))
    assert float(report0.extra["internalization"]) == 0.0
    assert int(report0.num_steps) == 0
    out1, report1 = model(tokens, steps=1)
    np.testing.assert_allclose(out1, model.decoder(model.map(c, c)), rtol=1e-12)
    assert int(report1.num_steps) == 1
    # Many plain steps of a contraction reach the solver's fixed point.
    solved, _ = model(tokens)
    model_tight = eqx.tree_at(
        lambda m: m.solver, model, jaxdeq.Anderson(rtol=1e-10, atol=0.0)
    )
    solved, _ = model_tight(tokens)
    looped, report = model(tokens, steps=60)
    np.testing.assert_allclose(looped, solved, rtol=1e-6, atol=1e-8)
    assert bool(report.successful)


@pytest.mark.slow
def test_attention_masks_restrict_information_flow(getkey):
    # Position i's output may depend only on the positions its mask allows.
    mask = sudoku_peers()
    block = AttentionBlock(8, 2, mask, key=getkey())
    h = jr.normal(getkey(), (81, 8), jnp.float64)
    jac = jax.jacrev(block)(h)  # (81, 8, 81, 8)
    depends = np.asarray(jnp.any(jac != 0, axis=(1, 3)))
    np.testing.assert_array_equal(depends, mask)
    causal = AttentionBlock(8, 2, causal_mask(5), key=getkey())
    jac = jax.jacrev(causal)(h[:5])
    depends = np.asarray(jnp.any(jac != 0, axis=(1, 3)))
    np.testing.assert_array_equal(depends, np.tril(np.ones((5, 5), bool)))


def _temp_bytes(model, tokens, steps):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params):
        model = eqx.combine(params, static)
        out, _ = jax.vmap(lambda t: model(t, steps=steps))(tokens)
        return jnp.sum(out**2)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.fail("XLA gave no memory analysis on this backend")
    return analysis.temp_size_in_bytes


@pytest.mark.slow
def test_training_memory_flat_for_attractor_grows_for_looped(getkey):
    tokens = jr.randint(getkey(), (4, 8), 0, 12)
    key = getkey()
    attractor = {
        m: _temp_bytes(_token_model(key, max_steps=m), tokens, None) for m in (8, 32)
    }
    assert attractor[32] == attractor[8]
    looped = {t: _temp_bytes(_token_model(key), tokens, t) for t in (8, 32)}
    assert looped[32] > 2.5 * looped[8]
    assert looped[8] > attractor[8]


class ToyBackbone(eqx.Module):
    layer: eqx.nn.Linear

    def __call__(self, x):
        return self.layer(x)


class ToyRefiner(eqx.Module):
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    gate: jax.Array

    def __call__(self, u):
        return self.gate * self.out(jnp.tanh(self.hidden(u)))


@pytest.mark.slow
def test_internalization_on_a_representable_task(getkey):
    # Targets are a linear function of the input, which the linear backbone can
    # represent on its own. Early on the refiner does the fitting and moves the
    # proposal a lot; once the loss is near zero, training keeps moving the proposal
    # towards the fixed point: ||y* - c|| / ||c|| falls from its peak, and so do the
    # solver's iterations.
    d = 8
    keys = jr.split(getkey(), 5)
    target_map = jr.normal(keys[0], (d, d), jnp.float64) / np.sqrt(d)
    xs = jr.normal(keys[1], (128, d), jnp.float64)
    ys = xs @ target_map.T
    refiner = ToyRefiner(
        eqx.nn.Linear(d, 32, key=keys[2], dtype=jnp.float64),
        eqx.nn.Linear(32, d, key=keys[3], dtype=jnp.float64),
        jnp.asarray(0.5, jnp.float64),
    )
    backbone = ToyBackbone(eqx.nn.Linear(d, d, key=keys[4], dtype=jnp.float64))
    backbone = eqx.tree_at(
        lambda b: b.layer.weight, backbone, 0.1 * backbone.layer.weight
    )
    model = AttractorRefiner(
        backbone,
        refiner,
        solver=jaxdeq.Anderson(rtol=1e-6, atol=1e-8),
        adjoint=jaxdeq.PhantomAdjoint(steps=2),
    )
    optim = optax.adam(1e-2)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        state = optim.init(params)

    def one_step(carry, _):
        params, state = carry

        def loss(params):
            out, report = jax.vmap(eqx.combine(params, static))(xs)
            return jnp.mean((out - ys) ** 2), report

        (value, report), grads = jax.value_and_grad(loss, has_aux=True)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optim.update(grads, state)
        internal = jnp.mean(report.extra["internalization"])
        metrics = (value, internal, jnp.mean(report.num_steps))
        return (eqx.apply_updates(params, updates), state), metrics

    # One compiled scan over the whole run: no compile or dispatch per step.
    _, (losses, internal, steps) = jax.jit(
        lambda p, s: jax.lax.scan(one_step, (p, s), None, length=1500)
    )(params, state)
    losses, internal, steps = map(np.asarray, (losses, internal, steps))
    peak = int(np.argmax(internal))
    assert peak < 300
    assert losses[-1] < 1e-4 * losses[0]
    assert internal[-1] < 0.7 * internal[peak]
    assert np.mean(steps[-100:]) < np.mean(steps[peak : peak + 100])


@pytest.mark.slow
def test_jacobian_penalty(affine, getkey):
    refiner, backbone, x, _ = affine
    model = _model(refiner, backbone, jacobian_weight=0.5)
    _, report = model(x)
    assert float(report.extra["jacobian_penalty"]) == 0.0  # no key: no penalty
    keys = jr.split(getkey(), 4000)
    penalties = jax.vmap(lambda k: model(x, key=k)[1].extra["jacobian_penalty"])(keys)
    # E = 0.5 ||A||_F^2 / N for the affine map (Hutchinson, 4000 probes).
    expected = 0.5 * float(jnp.sum(refiner.a**2)) / N
    np.testing.assert_allclose(float(jnp.mean(penalties)), expected, rtol=0.05)


@pytest.mark.slow
def test_evaluate_budgets(getkey):
    tokens = jr.randint(getkey(), (10, 8), 0, 12)
    model = _token_model(getkey())

    def metrics(logits, targets):
        return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == targets, axis=-1)}

    report = evaluate_budgets(model, tokens, tokens, metrics, batch_size=4)
    assert set(report) == {"T=0", "T=1", "converged"}
    assert report["T=0"]["internalization"] == 0.0
    assert report["T=1"]["steps"] == 1.0
    assert report["converged"]["converged"] == 1.0
    out, _ = jax.vmap(model)(tokens)
    expected = float(jnp.mean(metrics(out, tokens)["accuracy"]))
    np.testing.assert_allclose(report["converged"]["accuracy"], expected, rtol=1e-12)

    # Targets may be a pytree (labels plus a mask), chunked with the inputs.
    mask = np.asarray(jr.bernoulli(getkey(), 0.5, (10, 8)))

    def masked(logits, targets):
        labels, m = targets
        right = (jnp.argmax(logits, -1) == labels) & m
        return {"masked": jnp.sum(right, -1) / jnp.maximum(jnp.sum(m, -1), 1)}

    report = evaluate_budgets(
        model, tokens, (tokens, mask), masked, budgets=(None,), batch_size=3
    )
    expected = float(jnp.mean(masked(out, (tokens, mask))["masked"]))
    np.testing.assert_allclose(report["converged"]["masked"], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="leading"):
        evaluate_budgets(model, tokens, tokens[:4], metrics)


@pytest.mark.unchecked
def test_bad_input(affine):
    refiner, backbone, x, _ = affine
    with pytest.raises(ValueError, match="injection"):
        _model(refiner, backbone, injection="sometimes")
    with pytest.raises(ValueError, match="min_steps"):
        _model(refiner, backbone, min_steps=10, max_steps=5)
    with pytest.raises(TypeError, match="solver"):
        _model(refiner, backbone, solver="anderson")
    with pytest.raises(TypeError, match="callable"):
        AttractorRefiner(backbone, 3)
    with pytest.raises(ValueError, match="steps"):
        _model(refiner, backbone)(x, steps=-1)
    with pytest.raises(ValueError, match="clip"):
        jaxdeq.NeumannAdjoint(clip=0.0)
    with pytest.raises(ValueError, match="divisible"):
        AttentionBlock(10, 3, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="at least one"):
        AttentionBlock(4, 2, np.zeros((3, 3), bool), key=jr.PRNGKey(0))


@pytest.mark.slow
def test_sudoku_generator():
    puzzles, solutions = sudoku_puzzles(12, givens=(28, 36), seed=3)
    assert puzzles.shape == solutions.shape == (12, 81)
    for p, s in zip(puzzles, solutions):
        assert sudoku_is_solution(s)
        assert count_sudoku_solutions(p) == 1
        np.testing.assert_array_equal(p[p > 0], s[p > 0])
        assert 28 <= int(np.sum(p > 0)) <= 36
        np.testing.assert_array_equal(solve_sudoku(p), s)
    assert len({bytes(s) for s in solutions}) == 12
    again, _ = sudoku_puzzles(12, givens=(28, 36), seed=3)
    np.testing.assert_array_equal(again, puzzles)
    # A held-out set never repeats a training solution grid.
    _, held_out = sudoku_puzzles(12, givens=(28, 36), seed=3, exclude=solutions)
    assert not {bytes(s) for s in held_out} & {bytes(s) for s in solutions}
    # Known counts: the empty grid has many solutions, a clash has none.
    assert count_sudoku_solutions(np.zeros(81, int)) == 2
    clash = np.zeros(81, int)
    clash[0] = clash[1] = 5
    assert count_sudoku_solutions(clash) == 0
    with pytest.raises(ValueError, match="no solution"):
        solve_sudoku(clash)
    with pytest.raises(ValueError, match="givens"):
        sudoku_puzzles(1, givens=(10, 20))
    with pytest.raises(ValueError, match="81 cells"):
        count_sudoku_solutions(np.zeros(80, int))


def test_sudoku_symmetries_and_peers():
    puzzles, solutions = sudoku_puzzles(6, seed=1)
    rng = np.random.default_rng(0)
    aug_p, aug_s = sudoku_augment(puzzles, solutions, rng)
    for p, s, p0 in zip(aug_p, aug_s, puzzles):
        assert sudoku_is_solution(s)
        assert count_sudoku_solutions(p) == 1
        np.testing.assert_array_equal(p[p > 0], s[p > 0])
        assert int(np.sum(p > 0)) == int(np.sum(p0 > 0))
    assert not np.array_equal(aug_s, solutions)
    peers = sudoku_peers()
    assert peers.shape == (81, 81) and np.array_equal(peers, peers.T)
    np.testing.assert_array_equal(peers.sum(axis=1), 21)  # 20 peers and itself


def test_stdlib_text():
    train, test, train_files, test_files = load_stdlib_text(
        max_train_chars=20000, max_test_chars=5000
    )
    assert train.dtype == np.uint8 and len(train) == 20000 and len(test) == 5000
    assert not set(train_files) & set(test_files)
    assert all(f.split("/")[0] not in ("test", "tests") for f in train_files)
    text = "def f(x):\n\treturn x + 1  # ok\n"
    assert decode_text(encode_text(text)) == text
    assert decode_text(encode_text("é")) == "\x00"
    with pytest.raises(ValueError, match="test_fraction"):
        load_stdlib_text(test_fraction=1.0)


def test_attractor_info_is_a_deprecated_alias_of_report():
    import jaxdeq
    import jaxdeq.attractor

    with pytest.warns(DeprecationWarning, match="AttractorInfo is deprecated"):
        info = jaxdeq.attractor.AttractorInfo
    assert info is jaxdeq.Report
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        jaxdeq.attractor.Nope  # noqa: B018
