import dataclasses
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._adjoint import ImplicitAdjoint, PhantomAdjoint
from .._deq import DEQ
from .._solution import Report
from .._solver.anderson import Anderson
from .._solver.splitting import PeacemanRachford
from ..data import load_digits
from ._loop import _set_float, _set_int, Recipe


_BFLOAT16_TOL = 1e-2


def _check_options(
    options, *, ints=(), positive=(), fractions=(), non_negative=(), choices=()
):
    """Validate a recipe's options when they are made, before any compute.

    `ints`: `(name, low)` pairs; `positive`: finite floats > 0; `fractions`: in
    (0, 1); `non_negative`: finite floats >= 0; `choices`: `(name, allowed)`."""
    for name, low in ints:
        _set_int(options, name, low)
    for name in positive:
        _set_float(options, name, 0.0, float("inf"))
    for name in fractions:
        _set_float(options, name, 0.0, 1.0)
    for name in non_negative:
        _set_float(options, name, 0.0, float("inf"), closed=True)
    for name, allowed in choices:
        if getattr(options, name) not in allowed:
            raise ValueError(
                f"{type(options).__name__}: `{name}` must be one of {allowed}, got "
                f"{getattr(options, name)!r}."
            )


def _require(options, ok, message):
    if not ok:
        raise ValueError(f"{type(options).__name__}: {message}")


def _loosened(obj):
    """A solver or adjoint asking for what bfloat16 can resolve.

    bfloat16 has about three significant digits, so residuals below about 1e-2 are
    rounding noise: tolerances are raised to at least 1e-2 (in a nested linear
    solver too) instead of letting the solves run to their step limits.
    """
    if isinstance(obj, ImplicitAdjoint):
        return eqx.tree_at(lambda a: a.linear_solver, obj, _loosened(obj.linear_solver))
    fields = [f for f in ("rtol", "atol") if hasattr(obj, f)]
    if not fields:
        return obj
    values = tuple(max(float(getattr(obj, f)), _BFLOAT16_TOL) for f in fields)
    return eqx.tree_at(lambda o: tuple(getattr(o, f) for f in fields), obj, values)


def _float32(tree):
    """`tree` with its floating-point arrays in float32: the solves that run in
    float32 whatever the run's precision (dense factorisations, step-size control,
    EP's differences of small quantities)."""
    return jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, tree
    )


def _solve_stats(report):
    """Per-example forward-solve statistics of a classifier, as float32 metrics
    (from a layer's [`jaxdeq.Report`][] or a [`jaxdeq.fixed_point`][] solution)."""
    if not isinstance(report, Report):
        report = Report.from_solution(report)
    return {
        "solver_steps": report.num_steps.astype(jnp.float32),
        "residual": report.rel_residual.astype(jnp.float32),
        "failed": (~report.successful).astype(jnp.float32),
    }


def _classifier_loss(model, batch, key, probe=None):
    del key
    logits, stats = jax.vmap(model)(batch["x"], probe)
    loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["y"]
        )
    )
    metrics = {k: jnp.mean(v) for k, v in stats.items()}
    metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
    return loss, metrics


def _classifier_evaluate(model, data):
    logits, stats = jax.vmap(model)(jnp.asarray(data["x"]))
    metrics = {k: jnp.mean(v) for k, v in stats.items() if k != "failed"}
    metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data["y"]))
    return metrics


@dataclasses.dataclass(frozen=True)
class DEQDigitsOptions:
    """Options of the `deq-digits` recipe.

    **Fields:**

    - `hidden`: width of the equilibrium state.
    - `tol`: forward solver tolerance (relative and absolute).
    - `max_solver_steps`: the forward solver's step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 64
    tol: float = 1e-4
    max_solver_steps: int = 50
    test_fraction: float = 0.2

    def __post_init__(self):
        _check_options(
            self,
            ints=(("hidden", 1), ("max_solver_steps", 1)),
            positive=("tol",),
            fractions=("test_fraction",),
        )


class _Cell(eqx.Module):
    weight: jax.Array
    injection: eqx.nn.Linear

    def __init__(self, hidden, key):
        wkey, ukey = jr.split(key)
        # Spectral norm about 0.3 at the start: short first solves.
        self.weight = (
            0.25
            * jr.normal(wkey, (hidden, hidden), jnp.float32)
            / np.sqrt(hidden).astype(np.float32)
        )
        self.injection = eqx.nn.Linear(hidden, hidden, dtype=jnp.float32, key=ukey)

    def __call__(self, z, u):
        return jnp.tanh(self.weight.astype(z.dtype) @ z + self.injection(u))


class DEQDigitsClassifier(eqx.Module):
    """x (64 pixels) -> linear encoder -> DEQ tanh cell (Anderson, implicit
    gradients) -> linear head (10 classes): the `deq-digits` recipe's model.

    Computed in bfloat16 (`--precision bfloat16`), its forward and backward solves
    stop at relative residual 1e-2 (or the looser `tol`), what bfloat16's three
    significant digits can resolve."""

    encoder: eqx.nn.Linear
    deq: DEQ
    head: eqx.nn.Linear

    def __init__(self, options: DEQDigitsOptions, key):
        ekey, ckey, hkey = jr.split(key, 3)
        h = options.hidden
        # float32 throughout, also where float64 is enabled.
        self.encoder = eqx.nn.Linear(64, h, dtype=jnp.float32, key=ekey)
        self.deq = DEQ(
            _Cell(h, ckey),
            jnp.zeros(h, jnp.float32),
            solver=Anderson(rtol=options.tol, atol=options.tol),
            max_steps=options.max_solver_steps,
        )
        self.head = eqx.nn.Linear(h, 10, dtype=jnp.float32, key=hkey)

    def __call__(self, x, backward_stats=None):
        """Logits and solver statistics for one image (`backward_stats`: an optional
        [`jaxdeq.BackwardStats`][] probe for the backward solve)."""
        deq = self.deq
        if self.encoder.weight.dtype == jnp.bfloat16:
            deq = eqx.tree_at(
                lambda d: (d.solver, d.adjoint),
                deq,
                (_loosened(deq.solver), _loosened(deq.adjoint)),
            )
        z, report = deq(self.encoder(x), backward_stats=backward_stats)
        return self.head(z), _solve_stats(report)


def _deq_data(options):
    x, y, xt, yt = load_digits(test_fraction=options.test_fraction, seed=0)
    return {"x": x, "y": y}, {"x": xt, "y": yt}


DEQ_DIGITS = Recipe(
    name="deq-digits",
    description=(
        "A deep equilibrium classifier (tanh cell, Anderson forward solve, implicit "
        "gradients) on the 8x8 handwritten digits bundled with scikit-learn "
        "(1437 training and 360 held-out images, no download)."
    ),
    options=DEQDigitsOptions,
    init=lambda key, options: DEQDigitsClassifier(options, key),
    data=_deq_data,
    loss=_classifier_loss,
    evaluate=_classifier_evaluate,
    backward_stats=True,
)

RECIPES = {DEQ_DIGITS.name: DEQ_DIGITS}


@dataclasses.dataclass(frozen=True)
class AttractorSudokuOptions:
    """Options of the `attractor-sudoku` recipe.

    **Fields:**

    - `dim`, `heads`: width and attention heads of every block.
    - `backbone_depth`, `refiner_depth`: attention blocks in the backbone and in the
        weight-tied refiner.
    - `tol`: the refinement solve's tolerance (relative and absolute).
    - `min_solver_steps`, `max_solver_steps`: bounds on the refinement steps.
    - `phantom_steps`: $k$ of the phantom-gradient backward pass.
    - `jacobian_weight`: weight of the Jacobian penalty.
    - `train_puzzles`: generated training puzzles; `augment`: symmetry-augmented
        copies of each (the training set has `train_puzzles * augment` examples).
    - `test_puzzles`: held-out puzzles (their solution grids never appear in
        training).
    - `min_givens`, `max_givens`: the range of given cells per puzzle.
    """

    dim: int = 32
    heads: int = 4
    backbone_depth: int = 2
    refiner_depth: int = 2
    tol: float = 1e-3
    min_solver_steps: int = 2
    max_solver_steps: int = 32
    phantom_steps: int = 2
    jacobian_weight: float = 1e-3
    train_puzzles: int = 2000
    augment: int = 4
    test_puzzles: int = 200
    min_givens: int = 34
    max_givens: int = 42

    def __post_init__(self):
        _check_options(
            self,
            ints=(
                ("dim", 1),
                ("heads", 1),
                ("backbone_depth", 1),
                ("refiner_depth", 1),
                ("min_solver_steps", 0),
                ("max_solver_steps", 1),
                ("phantom_steps", 1),
                ("train_puzzles", 1),
                ("augment", 1),
                ("test_puzzles", 1),
                ("min_givens", 17),
                ("max_givens", 17),
            ),
            positive=("tol",),
            non_negative=("jacobian_weight",),
        )
        _require(
            self,
            self.dim % self.heads == 0,
            f"`dim` ({self.dim}) must be a multiple of `heads` ({self.heads}).",
        )
        _require(
            self,
            self.min_solver_steps <= self.max_solver_steps,
            f"`min_solver_steps` ({self.min_solver_steps}) must not exceed "
            f"`max_solver_steps` ({self.max_solver_steps}).",
        )
        _require(
            self,
            self.min_givens <= self.max_givens <= 81,
            "need 17 <= min_givens <= max_givens <= 81 (17 is the fewest givens "
            f"of any proper Sudoku), got {self.min_givens}, {self.max_givens}.",
        )


def _attractor_init(key, options):
    from ..attractor import (
        AttentionBlock,
        AttractorRefiner,
        GatedRefiner,
        TokenBackbone,
        TokenDecoder,
    )
    from ..data import sudoku_peers

    mask = sudoku_peers()
    kb, kr, kd = jr.split(key, 3)
    f32 = jnp.float32
    blocks = [
        AttentionBlock(options.dim, options.heads, mask, dtype=f32, key=k)
        for k in jr.split(kr, options.refiner_depth)
    ]
    return AttractorRefiner(
        TokenBackbone(
            10,
            81,
            options.dim,
            options.backbone_depth,
            options.heads,
            mask,
            dtype=f32,
            key=kb,
        ),
        GatedRefiner(blocks, options.dim, dtype=f32),
        TokenDecoder(options.dim, 9, dtype=f32, key=kd),
        solver=Anderson(rtol=options.tol, atol=options.tol, memory=5, ridge=1e-4),
        adjoint=PhantomAdjoint(steps=options.phantom_steps),
        min_steps=options.min_solver_steps,
        max_steps=options.max_solver_steps,
        jacobian_weight=options.jacobian_weight,
    )


def _for_precision(model):
    # As for deq-digits: in bfloat16 ask the solve for what bfloat16 can resolve.
    if model.decoder.linear.weight.dtype != jnp.bfloat16:
        return model
    return eqx.tree_at(lambda m: m.solver, model, _loosened(model.solver))


def _sudoku_metrics(logits, labels, blank):
    right = jnp.argmax(logits, -1) == labels
    cells = jnp.sum(right & blank, -1) / jnp.maximum(jnp.sum(blank, -1), 1)
    return jnp.mean(cells), jnp.mean(jnp.all(right, -1))


def _attractor_loss(model, batch, key, probe=None):
    model = _for_precision(model)
    keys = jr.split(key, batch["puzzle"].shape[0])
    logits, report = jax.vmap(lambda x, k, p: model(x, key=k, backward_stats=p))(
        batch["puzzle"], keys, probe
    )
    loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["solution"]
        )
    )
    cells, exact = _sudoku_metrics(logits, batch["solution"], batch["puzzle"] == 0)
    metrics = {
        "accuracy": cells,
        "exact": exact,
        "solver_steps": jnp.mean(report.num_steps.astype(jnp.float32)),
        "residual": jnp.mean(report.rel_residual.astype(jnp.float32)),
        "failed": 1.0 - jnp.mean(report.successful.astype(jnp.float32)),
        "internalization": jnp.mean(
            report.extra["internalization"].astype(jnp.float32)
        ),
    }
    penalty = jnp.mean(report.extra["jacobian_penalty"].astype(jnp.float32))
    return loss + penalty, metrics


def _attractor_evaluate(model, data):
    model = _for_precision(model)
    puzzles = jnp.asarray(data["puzzle"])
    labels = jnp.asarray(data["solution"])
    logits, report = jax.vmap(model)(puzzles)
    cells, exact = _sudoku_metrics(logits, labels, puzzles == 0)
    logits0, _ = jax.vmap(lambda x: model(x, steps=0))(puzzles)
    cells0, exact0 = _sudoku_metrics(logits0, labels, puzzles == 0)
    return {
        "accuracy": cells,
        "exact": exact,
        "solver_steps": jnp.mean(report.num_steps.astype(jnp.float32)),
        "internalization": jnp.mean(
            report.extra["internalization"].astype(jnp.float32)
        ),
        "accuracy_T0": cells0,
        "exact_T0": exact0,
    }


def _attractor_data(options):
    from ..data import sudoku_augment, sudoku_puzzles

    givens = (options.min_givens, options.max_givens)
    puzzles, solutions = sudoku_puzzles(options.train_puzzles, givens=givens, seed=0)
    test_p, test_s = sudoku_puzzles(
        options.test_puzzles, givens=givens, seed=1, exclude=solutions
    )
    rng = np.random.default_rng(0)
    copies = [(puzzles, solutions)] + [
        sudoku_augment(puzzles, solutions, rng) for _ in range(options.augment - 1)
    ]
    train_p = np.concatenate([p for p, _ in copies]).astype(np.int32)
    train_s = np.concatenate([s for _, s in copies]).astype(np.int32) - 1
    return (
        {"puzzle": train_p, "solution": train_s},
        {"puzzle": test_p.astype(np.int32), "solution": test_s.astype(np.int32) - 1},
    )


ATTRACTOR_SUDOKU = Recipe(
    name="attractor-sudoku",
    description=(
        "An attractor model (peer-attention backbone proposes, a weight-tied gated "
        "refiner is solved to its fixed point by Anderson, phantom gradients plus a "
        "Jacobian penalty) on 9x9 Sudoku puzzles with unique solutions generated "
        "offline by jaxdeq.data.sudoku_puzzles, augmented by Sudoku symmetries; "
        "evaluated on held-out puzzles with unseen solution grids, refined and at "
        "T = 0."
    ),
    options=AttractorSudokuOptions,
    init=_attractor_init,
    data=_attractor_data,
    loss=_attractor_loss,
    evaluate=_attractor_evaluate,
    backward_stats=True,
)

RECIPES[ATTRACTOR_SUDOKU.name] = ATTRACTOR_SUDOKU


@dataclasses.dataclass(frozen=True)
class MonotoneDigitsOptions:
    r"""Options of the `monotone-digits` recipe.

    **Fields:**

    - `hidden`: width of the equilibrium state.
    - `margin`: the monotonicity margin $m$ of the weight ($I - W \succeq m I$).
    - `tol`: the splitting solver's tolerance (relative and absolute).
    - `max_solver_steps`: its step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 64
    margin: float = 0.5
    tol: float = 1e-4
    max_solver_steps: int = 100
    test_fraction: float = 0.2

    def __post_init__(self):
        _check_options(
            self,
            ints=(("hidden", 1), ("max_solver_steps", 1)),
            positive=("margin", "tol"),
            fractions=("test_fraction",),
        )


class MonotoneDigitsClassifier(eqx.Module):
    """x (64 pixels) -> monotone DEQ (dense monotone weight, ReLU,
    Peaceman–Rachford splitting, backward by the transposed splitting) -> linear
    head (10 classes): the `monotone-digits` recipe's model. The fixed point exists
    and is unique for every input and every parameter value. The equilibrium is
    solved in float32 also under `--precision bfloat16` (the resolvent's dense
    factorisation has no bfloat16 kernel); the head computes in the run's
    precision."""

    deq: Any
    head: eqx.nn.Linear

    def __init__(self, options: MonotoneDigitsOptions, key):
        from ..monotone import MonDEQ, MonotoneLinear

        okey, ikey, hkey = jr.split(key, 3)
        f32 = jnp.float32
        h = options.hidden
        self.deq = MonDEQ(
            MonotoneLinear(h, options.margin, key=okey, dtype=f32),
            eqx.nn.Linear(64, h, dtype=f32, key=ikey),
            solver=PeacemanRachford(rtol=options.tol, atol=options.tol),
            max_steps=options.max_solver_steps,
        )
        self.head = eqx.nn.Linear(h, 10, dtype=f32, key=hkey)

    def __call__(self, x, backward_stats=None):
        """Logits and solver statistics for one image (`backward_stats`: an optional
        [`jaxdeq.BackwardStats`][] probe for the backward solve)."""
        # The monotone operator's resolvent is a dense factorisation, which LAPACK
        # has no bfloat16 for: the equilibrium is always solved in float32.
        deq = _float32(self.deq)
        z, report = deq(x.astype(jnp.float32), backward_stats=backward_stats)
        z = z.astype(self.head.weight.dtype)
        return self.head(z), _solve_stats(report)


MONOTONE_DIGITS = Recipe(
    name="monotone-digits",
    description=(
        "A monotone deep equilibrium classifier (dense monotone weight with a "
        "guaranteed unique fixed point, ReLU, Peaceman-Rachford splitting forward, "
        "transposed splitting backward) on the 8x8 digits bundled with scikit-learn."
    ),
    options=MonotoneDigitsOptions,
    init=lambda key, options: MonotoneDigitsClassifier(options, key),
    data=_deq_data,
    loss=_classifier_loss,
    evaluate=_classifier_evaluate,
    backward_stats=True,
)


@dataclasses.dataclass(frozen=True)
class NODEDigitsOptions:
    """Options of the `node-digits` recipe.

    **Fields:**

    - `hidden`: the ODE state's size.
    - `width`: hidden width of the vector field's MLP (two layers, tanh).
    - `tol`: the adaptive step-size controller's tolerance (relative and absolute).
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 32
    width: int = 64
    tol: float = 1e-3
    test_fraction: float = 0.2

    def __post_init__(self):
        _check_options(
            self,
            ints=(("hidden", 1), ("width", 1)),
            positive=("tol",),
            fractions=("test_fraction",),
        )


class NODEDigitsClassifier(eqx.Module):
    """x (64 pixels) -> linear encoder -> neural ODE on [0, 1] (Dopri5, adaptive
    steps, backpropagation through the solver with recursive checkpointing) ->
    linear head: the `node-digits` recipe's model. The ODE is always solved in
    float32 (also under `--precision bfloat16`, whose step-size control would stall
    on rounding noise)."""

    encoder: eqx.nn.Linear
    ode: Any
    head: eqx.nn.Linear

    def __init__(self, options: NODEDigitsOptions, key):
        import diffrax

        from ..ode import ConcatField, NeuralODE

        ekey, fkey, hkey = jr.split(key, 3)
        f32 = jnp.float32
        h = options.hidden
        self.encoder = eqx.nn.Linear(64, h, dtype=f32, key=ekey)
        self.ode = NeuralODE(
            ConcatField(h, 0, options.width, dtype=f32, key=fkey),
            solver=diffrax.Dopri5(),
            stepsize_controller=diffrax.PIDController(
                rtol=options.tol, atol=options.tol
            ),
            adjoint=diffrax.RecursiveCheckpointAdjoint(),
        )
        self.head = eqx.nn.Linear(h, 10, dtype=f32, key=hkey)

    def __call__(self, x, backward_stats=None):
        """Logits and solver statistics for one image (`backward_stats` is accepted
        for a uniform interface and unused: the ODE is backpropagated)."""
        del backward_stats
        ode = _float32(self.ode)
        y0 = self.encoder(x).astype(jnp.float32)
        y1, stats = ode(y0)
        logits = self.head(y1.astype(self.head.weight.dtype))
        return logits, {
            "solver_steps": stats.num_steps.astype(jnp.float32),
            "nfe": stats.num_fn_evals.astype(jnp.float32),
        }


NODE_DIGITS = Recipe(
    name="node-digits",
    description=(
        "A neural ODE classifier (linear encoder, MLP vector field on [0, 1] solved "
        "by diffrax Dopri5 with adaptive steps, linear head) on the 8x8 digits "
        "bundled with scikit-learn."
    ),
    options=NODEDigitsOptions,
    init=lambda key, options: NODEDigitsClassifier(options, key),
    data=_deq_data,
    loss=_classifier_loss,
    evaluate=_classifier_evaluate,
)

RECIPES[MONOTONE_DIGITS.name] = MONOTONE_DIGITS
RECIPES[NODE_DIGITS.name] = NODE_DIGITS


@dataclasses.dataclass(frozen=True)
class EPDigitsOptions:
    """Options of the `ep-digits` recipe.

    **Fields:**

    - `hidden`: width of the hidden layer of the 64-hidden-10 network.
    - `beta`: the nudging strength.
    - `estimator`: `"symmetric"`, `"one_sided"` or `"holomorphic"` (see
        [`jaxdeq.ep.ep_gradient`][]).
    - `num_nudges`: complex nudges of the holomorphic estimator.
    - `tol`: the relaxations' tolerance (relative; absolute 1e-2 times it).
    - `max_solver_steps`: each relaxation's step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 128
    beta: float = 0.2
    estimator: Literal["one_sided", "symmetric", "holomorphic"] = "symmetric"
    num_nudges: int = 4
    tol: float = 1e-5
    max_solver_steps: int = 100
    test_fraction: float = 0.2

    def __post_init__(self):
        _check_options(
            self,
            ints=(("hidden", 1), ("num_nudges", 1), ("max_solver_steps", 1)),
            positive=("beta", "tol"),
            fractions=("test_fraction",),
            choices=(("estimator", ("symmetric", "one_sided", "holomorphic")),),
        )


class EPDigitsClassifier(eqx.Module):
    """A layered continuous Hopfield network 64-hidden-10 (sigmoid units, symmetric
    weights: an energy-based model) trained by equilibrium propagation: the
    `ep-digits` recipe's model. Its prediction is the output layer at the free
    fixed point; the training gradient is the EP estimate from nudged relaxations
    towards the one-hot target (squared error), not backpropagation. The
    relaxations run in float32 also under `--precision bfloat16` (the EP estimate
    is a difference of small quantities)."""

    network: Any
    beta: float = eqx.field(static=True)
    estimator: Literal["one_sided", "symmetric", "holomorphic"] = eqx.field(static=True)
    num_nudges: int = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(self, options: EPDigitsOptions, key):
        from ..ep import LayeredNetwork

        estimators = ("symmetric", "one_sided", "holomorphic")
        if options.estimator not in estimators:
            raise ValueError(
                f"ep-digits: `estimator` must be one of {estimators}, got "
                f"{options.estimator!r}."
            )
        if not options.beta > 0:
            raise ValueError(f"ep-digits: `beta` must be > 0, got {options.beta}.")
        self.network = LayeredNetwork(
            (64, options.hidden, 10), symmetric=True, dtype=jnp.float32, key=key
        )
        self.beta = float(options.beta)
        self.estimator = options.estimator
        self.num_nudges = int(options.num_nudges)
        self.tol = float(options.tol)
        self.max_steps = int(options.max_solver_steps)

    def _solver(self):
        return Anderson(rtol=self.tol, atol=1e-2 * self.tol)

    def __call__(self, x):
        """The output layer at the free fixed point, and the relaxation's
        statistics, for one image."""
        from ..ep import free_phase

        network = _float32(self.network)
        sol = free_phase(
            network,
            x.astype(jnp.float32),
            solver=self._solver(),
            max_steps=self.max_steps,
            throw=False,
        )
        return network.output(sol.value), _solve_stats(sol)

    def ep_estimate(self, x, target):
        """The EP gradient estimate for one image and its one-hot `target`, with the
        relaxations' statistics ([`jaxdeq.ep.ep_gradient`][])."""
        from ..ep import ep_gradient

        network = jax.tree.map(
            lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a,
            _float32(self.network),
        )
        return ep_gradient(
            network,
            x.astype(jnp.float32),
            target,
            beta=self.beta,
            estimator=self.estimator,
            num_nudges=self.num_nudges,
            solver=self._solver(),
            max_steps=self.max_steps,
            throw=False,
        )


def _ep_loss(model, batch, key):
    # The loop differentiates this loss; its value is the cost at the free fixed
    # point and its gradient the batch mean of the EP estimates: <stop_gradient(g),
    # theta> - stop_gradient(<g, theta>) is zero with gradient g.
    del key
    targets = jax.nn.one_hot(batch["y"], 10, dtype=jnp.float32)
    grads, stats = jax.vmap(model.ep_estimate)(batch["x"], targets)
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    params = eqx.filter(model.network, eqx.is_inexact_array)
    inner = sum(
        jnp.sum(jax.lax.stop_gradient(g) * p.astype(jnp.float32))
        for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params))
    )
    nudged = stats.extra["nudged"]
    loss = jnp.mean(stats.extra["loss"]) + inner - jax.lax.stop_gradient(inner)
    metrics = {
        "accuracy": jnp.mean(jnp.argmax(stats.extra["prediction"], -1) == batch["y"]),
        "solver_steps": jnp.mean(stats.num_steps).astype(jnp.float32),
        "residual": jnp.mean(stats.rel_residual).astype(jnp.float32),
        "nudged_steps": jnp.mean(nudged.num_steps).astype(jnp.float32),
        "nudged_residual": jnp.mean(nudged.rel_residual).astype(jnp.float32),
    }
    return loss, metrics


EP_DIGITS = Recipe(
    name="ep-digits",
    description=(
        "A layered continuous Hopfield network (64-128-10, sigmoid, symmetric "
        "weights) trained by equilibrium propagation (symmetric nudges by default; "
        "the gradient comes from nudged relaxations, not backpropagation) on the 8x8 "
        "digits bundled with scikit-learn."
    ),
    options=EPDigitsOptions,
    init=lambda key, options: EPDigitsClassifier(options, key),
    data=_deq_data,
    loss=_ep_loss,
    evaluate=_classifier_evaluate,
)

RECIPES[EP_DIGITS.name] = EP_DIGITS


@dataclasses.dataclass(frozen=True)
class CGSGraphsOptions:
    """Options of the `cgs-graphs` recipe.

    **Fields:**

    - `task`: `"pagerank"` or `"heat"` ([`jaxdeq.data.graph_steady_states`][]).
    - `normalisation`: of the transition matrix, `"degree"`, `"rows"` or
        `"columns"` (see [`jaxdeq.graph.ConvergentGraphSolver`][]).
    - `gamma`: the contraction factor in (0, 1).
    - `hidden`, `heads`: width of the state and number of transition matrices.
    - `num_graphs`, `test_graphs`: graphs generated, and how many of them are
        held out for evaluation.
    - `data_seed`: the graph generator's seed (the run's `--seed` sets the
        initialisation and the batch order).
    """

    task: str = "pagerank"
    normalisation: Literal["degree", "rows", "columns"] = "columns"
    gamma: float = 0.95
    hidden: int = 16
    heads: int = 2
    num_graphs: int = 192
    test_graphs: int = 64
    data_seed: int = 0

    def __post_init__(self):
        _check_options(
            self,
            ints=(
                ("hidden", 1),
                ("heads", 1),
                ("num_graphs", 2),
                ("test_graphs", 1),
                ("data_seed", 0),
            ),
            fractions=("gamma",),
            choices=(
                ("task", ("pagerank", "heat")),
                ("normalisation", ("degree", "rows", "columns")),
            ),
        )
        _require(
            self,
            self.test_graphs < self.num_graphs,
            f"need test_graphs < num_graphs, got test_graphs={self.test_graphs}, "
            f"num_graphs={self.num_graphs}.",
        )


_GRAPH_FIELDS = ("nodes", "senders", "receivers", "edges", "node_mask", "edge_mask")


class CGSGraphsRegressor(eqx.Module):
    """A convergent graph solver (linear, one LU solve per graph and head) with an
    MLP decoder of each node's state and features: the `cgs-graphs` recipe's
    model, regressing the stationary state of a process on random graphs. The
    solve runs in float32 also under `--precision bfloat16` (LAPACK has no
    bfloat16 factorisation)."""

    cgs: Any

    def __init__(self, options: CGSGraphsOptions, key):
        from ..graph import ConvergentGraphSolver

        self.cgs = ConvergentGraphSolver(
            3,
            1,
            hidden=options.hidden,
            heads=options.heads,
            gamma=options.gamma,
            width=32,
            depth=2,
            normalisation=options.normalisation,
            dtype=jnp.float32,
            key=key,
        )

    def __call__(self, graph):
        """Per-node predictions `(max_nodes, 1)` (zero at padding) and the solve's
        statistics, for one padded [`jaxdeq.graph.Graph`][]."""
        cgs = _float32(self.cgs)
        graph = _float32(graph)
        out, report = cgs(graph)
        return out, {"residual": report.rel_residual.astype(jnp.float32)}


def _batch_graphs(batch):
    from ..graph import Graph

    return Graph(*(batch[f] for f in _GRAPH_FIELDS))


def _cgs_errors(model, batch):
    pred, stats = jax.vmap(model)(_batch_graphs(batch))
    mask = batch["node_mask"][..., None]
    count = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    y = batch["y"].astype(jnp.float32)
    sq = jnp.where(mask, (pred.astype(jnp.float32) - y) ** 2, 0)
    mean = jnp.sum(jnp.where(mask, y, 0)) / count
    var = jnp.sum(jnp.where(mask, (y - mean) ** 2, 0)) / count
    mse = jnp.sum(sq) / count
    return mse, {"mse": mse, "nmse": mse / var, "residual": jnp.mean(stats["residual"])}


def _cgs_loss(model, batch, key):
    del key
    return _cgs_errors(model, batch)


def _cgs_evaluate(model, data):
    return _cgs_errors(model, {k: jnp.asarray(v) for k, v in data.items()})[1]


def _cgs_data(options):
    from ..data import graph_steady_states

    if not 0 < options.test_graphs < options.num_graphs:
        raise ValueError(
            f"cgs-graphs: need 0 < test_graphs < num_graphs, got test_graphs="
            f"{options.test_graphs}, num_graphs={options.num_graphs}."
        )
    graphs, targets = graph_steady_states(
        options.task, options.num_graphs, seed=options.data_seed
    )
    arrays = {f: np.asarray(getattr(graphs, f)) for f in _GRAPH_FIELDS}
    arrays["y"] = targets
    cut = options.num_graphs - options.test_graphs
    train = {k: v[:cut] for k, v in arrays.items()}
    held_out = {k: v[cut:] for k, v in arrays.items()}
    return train, held_out


CGS_GRAPHS = Recipe(
    name="cgs-graphs",
    description=(
        "A convergent graph solver (a contraction on every graph: unique fixed point "
        "by one LU solve, implicit gradients) regressing n x PageRank or a heat "
        "steady state on random graphs generated offline (128 for training, 64 "
        "held out; the evaluation reports the held-out normalised MSE)."
    ),
    options=CGSGraphsOptions,
    init=lambda key, options: CGSGraphsRegressor(options, key),
    data=_cgs_data,
    loss=_cgs_loss,
    evaluate=_cgs_evaluate,
)

RECIPES[CGS_GRAPHS.name] = CGS_GRAPHS
