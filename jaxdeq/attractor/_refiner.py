from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._adjoint import PhantomAdjoint
from .._deq import _SOLVER_TYPES, fixed_point
from .._misc import check_positive_int, relative
from .._regularisers import jacobian_regulariser
from .._solution import BackwardStats, Report, RESULTS, TRACE_SIZE
from .._solver.anderson import Anderson
from .._solver.min_steps import at_least


_INJECTIONS = ("persistent", "initial")


def _persistent(y, args):
    # F(y; c) = c + R(y + c). At module level: a fresh closure per call would make
    # jaxdeq.fixed_point recompile.
    refiner, c = args
    u = jtu.tree_map(jnp.add, y, c)
    return jtu.tree_map(jnp.add, c, refiner(u))


def _initial(y, args):
    # F(y) = R(y): the proposal is only the starting point.
    refiner, _ = args
    return refiner(y)


_MAPS = {"persistent": _persistent, "initial": _initial}


def _norm(tree) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jtu.tree_leaves(tree)))


def _difference(a, b):
    return jtu.tree_map(jnp.subtract, a, b)


def _size(tree) -> int:
    return sum(int(np.prod(jnp.shape(x))) for x in jtu.tree_leaves(tree))


class AttractorRefiner(eqx.Module):
    r"""An attractor model: a backbone proposes, a weight-tied refiner solves for the
    fixed point, a decoder reads it out.

    The backbone maps an input to a proposal $c$ (output embeddings). A refiner
    $R$ (typically a few weight-tied blocks with small gated residual branches, see
    [`jaxdeq.attractor.GatedRefiner`][]) defines the map

    $$F(y; c) = c + R(y + c)$$

    with the proposal injected at every step (`injection="persistent"`); the output
    is the decoded fixed point $y^* = F(y^*; c)$, solved from
    $\mathrm{stop\_gradient}(c)$ by any jaxdeq or optimistix solver (Anderson by
    default) with at least `min_steps` and at most `max_steps` steps. Called on one
    sample; `vmap` it over a batch, so every sample stops on its own.

    Gradients come from any jaxdeq adjoint, so training memory is flat in the number
    of refinement steps: [`jaxdeq.PhantomAdjoint`][] (default, $k = 2$),
    [`jaxdeq.JacobianFreeAdjoint`][], [`jaxdeq.NeumannAdjoint`][] (with `clip`) or
    [`jaxdeq.ImplicitAdjoint`][]. Because the solve starts from a stopped proposal,
    the backbone is trained only through the injection $c$ inside $F$. With
    `injection="initial"`, $F(y) = R(y)$: the proposal is only the starting point,
    and for a contractive $R$ the fixed point — and so the output — does not depend
    on it at all (a baseline showing why the injection must persist).

    Inference at a fixed budget: `model(x, steps=T)` applies $F$ exactly $T$ times
    from $c$ with no solver ($T = 0$ decodes the proposal itself). Trained with
    `steps=T` this is also the looped (unrolled, backpropagated) baseline, whose
    memory grows with $T$.

    ??? cite "References"

        ```bibtex
        @article{solve_the_loop2026,
            title = {Solve the Loop: Attractor Models for Language and Reasoning},
            year = {2026},
        }

        @inproceedings{bai2019deep,
            author = {Bai, Shaojie and Kolter, J. Zico and Koltun, Vladlen},
            title = {Deep Equilibrium Models},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2019},
        }
        ```
    """

    backbone: Callable
    refiner: Callable
    decoder: Callable | None = None
    solver: Any = Anderson(rtol=1e-3, atol=1e-6, memory=5, ridge=1e-4)
    adjoint: optx.AbstractAdjoint = PhantomAdjoint(steps=2)
    min_steps: int = eqx.field(static=True, default=1)
    max_steps: int = eqx.field(static=True, default=32)
    injection: Literal["persistent", "initial"] = eqx.field(
        static=True, default="persistent"
    )
    jacobian_weight: float = eqx.field(static=True, default=0.0)
    throw: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        for name in ("backbone", "refiner"):
            if not callable(getattr(self, name)):
                raise TypeError(f"AttractorRefiner: `{name}` must be callable.")
        if self.decoder is not None and not callable(self.decoder):
            raise TypeError("AttractorRefiner: `decoder` must be callable or None.")
        if not isinstance(self.solver, _SOLVER_TYPES):
            raise TypeError(
                "AttractorRefiner: `solver` must be an optimistix or jaxdeq solver, "
                "e.g. jaxdeq.Anderson(rtol=1e-3, atol=1e-6); got "
                f"{type(self.solver).__name__}."
            )
        if not isinstance(self.adjoint, optx.AbstractAdjoint):
            raise TypeError(
                "AttractorRefiner: `adjoint` must be a jaxdeq or optimistix adjoint, "
                f"e.g. jaxdeq.PhantomAdjoint(steps=2); got {self.adjoint!r}."
            )
        check_positive_int("AttractorRefiner", "min_steps", self.min_steps, minimum=0)
        check_positive_int("AttractorRefiner", "max_steps", self.max_steps)
        if self.min_steps > self.max_steps:
            raise ValueError(
                f"AttractorRefiner: `min_steps` ({self.min_steps}) exceeds "
                f"`max_steps` ({self.max_steps})."
            )
        if self.min_steps > 1 and not isinstance(
            self.solver, (optx.AbstractFixedPointSolver, optx.AbstractRootFinder)
        ):
            raise TypeError(
                "AttractorRefiner: `min_steps > 1` needs a fixed-point solver or a "
                f"root finder, got {type(self.solver).__name__}."
            )
        if self.injection not in _INJECTIONS:
            raise ValueError(
                f"AttractorRefiner: `injection` must be one of {_INJECTIONS}, got "
                f"{self.injection!r}."
            )
        if not float(self.jacobian_weight) >= 0:
            raise ValueError(
                "AttractorRefiner: `jacobian_weight` must be >= 0, got "
                f"{self.jacobian_weight!r}."
            )

    def proposal(self, x: PyTree[Array]) -> PyTree[Array]:
        """The backbone's proposal $c$ for one input."""
        return self.backbone(x)

    def map(self, y: PyTree[Array], c: PyTree[Array]) -> PyTree[Array]:
        """One application of the refinement map $F(y; c)$."""
        return _MAPS[self.injection](y, (self.refiner, c))

    def decode(self, y: PyTree[Array]) -> Any:
        """Decode a state (a proposal or a refined state) to the model's output."""
        return y if self.decoder is None else self.decoder(y)

    def refine(
        self,
        c: PyTree[Array],
        *,
        steps: int | None = None,
        key: PRNGKeyArray | None = None,
        backward_stats: BackwardStats | None = None,
    ) -> tuple[PyTree[Array], Report]:
        """Refine a proposal: solve $y = F(y; c)$, or apply $F$ `steps` times.

        **Arguments:**

        - `c`: the proposal of one sample.
        - `steps`: `None` (default) solves to the solver's tolerance; an integer
            $T \\ge 0$ applies $F$ exactly $T$ times from $c$, with no solver and
            with the tape on (so a loss backpropagates through the loop).
        - `key`: a PRNG key for the Jacobian penalty's probe; the penalty is zero
            without one.
        - `backward_stats`: an optional [`jaxdeq.BackwardStats`][] probe for the
            statistics of the backward pass (solve mode only).

        **Returns:**

        `(y, report)`: the refined state and its [`jaxdeq.Report`][] (per sample
        under `vmap`):

        - `result`: `successful` when the returned $y$ meets the solver's
            tolerance $\\|F(y) - y\\| \\le \\text{atol} + \\text{rtol}\\,\\|F(y)\\|$
            (in budget mode too, where otherwise it is
            `fixed_point_max_steps_reached`);
        - `num_steps`: refinement steps taken (the budget $T$ in budget mode);
        - `abs_residual`, `rel_residual`: $\\|F(y) - y\\|$ and
            $\\|F(y) - y\\| / \\|F(y)\\|$ at the returned $y$;
        - `extra["internalization"]`: $\\|y - c\\| / \\|c\\|$, how far refinement
            moved the proposal; it shrinks over training as the backbone
            internalises the equilibrium;
        - `extra["jacobian_penalty"]`: `jacobian_weight` times a Hutchinson
            estimate of $\\|\\partial F / \\partial y\\|_F^2$ per state element at the
            solution (zero when the weight is zero or no `key` was given); add it
            to the loss.
        """
        fn = _MAPS[self.injection]
        args = (self.refiner, c)
        start = jax.lax.stop_gradient(c)
        if steps is None:
            sol = fixed_point(
                fn,
                at_least(self.solver, self.min_steps),
                start,
                args,
                max_steps=self.max_steps,
                adjoint=self.adjoint,
                throw=self.throw,
                backward_stats=backward_stats,
            )
            y = sol.value
            report = Report.from_solution(sol)
        else:
            if isinstance(steps, bool) or not (
                isinstance(steps, (int, np.integer)) and steps >= 0
            ):
                raise ValueError(
                    "AttractorRefiner: `steps` must be None (solve to tolerance) or "
                    f"an int >= 0 (a fixed budget), got {steps!r}."
                )
            steps = int(steps)
            y = start
            if steps > 0:
                y, _ = jax.lax.scan(
                    lambda y, _: (fn(y, args), None), y, None, length=steps
                )
            fy = jax.lax.stop_gradient(fn(y, args))
            gap = _norm(_difference(fy, jax.lax.stop_gradient(y)))
            f_norm = _norm(fy)
            rel_residual = relative(gap, f_norm)
            rtol = getattr(self.solver, "rtol", 0.0)
            atol = getattr(self.solver, "atol", 0.0)
            converged = gap <= atol + rtol * f_norm
            result = RESULTS.where(
                converged,
                RESULTS.successful,  # pyright: ignore[reportArgumentType]
                RESULTS.fixed_point_max_steps_reached,
            )
            trace = jnp.full((TRACE_SIZE,), jnp.nan, rel_residual.dtype)
            report = Report(
                result=result,
                num_steps=jnp.asarray(steps),
                num_fn_evals=jnp.asarray(steps + 1),
                abs_residual=gap,
                rel_residual=rel_residual,
                residual_trace=trace.at[min(steps, TRACE_SIZE - 1)].set(rel_residual),
            )
            if self.throw:
                y = result.error_if(y, result != RESULTS.successful)
        stopped_y = jax.lax.stop_gradient(y)
        stopped_c = jax.lax.stop_gradient(c)
        internalization = relative(
            _norm(_difference(stopped_y, stopped_c)), _norm(stopped_c)
        )
        dtype = report.rel_residual.dtype
        if self.jacobian_weight > 0 and key is not None:
            penalty = jacobian_regulariser(fn, stopped_y, args, key) / _size(y)
            penalty = self.jacobian_weight * penalty
        else:
            penalty = jnp.zeros((), dtype)
        extra = {
            "internalization": internalization.astype(dtype),
            "jacobian_penalty": jnp.asarray(penalty, dtype),
        }
        return y, eqx.tree_at(lambda r: r.extra, report, extra)

    def __call__(
        self,
        x: PyTree[Array],
        *,
        steps: int | None = None,
        key: PRNGKeyArray | None = None,
        backward_stats: BackwardStats | None = None,
    ) -> tuple[Any, Report]:
        """Propose, refine and decode one sample.

        **Arguments:**

        - `x`: the input of one sample, passed to the backbone.
        - `steps`: `None` to solve to tolerance, or a fixed budget $T \\ge 0$ (see
            [`jaxdeq.attractor.AttractorRefiner.refine`][]).
        - `key`: a PRNG key for the Jacobian penalty (training only).
        - `backward_stats`: an optional [`jaxdeq.BackwardStats`][] probe.

        **Returns:**

        `(output, report)`: the decoded refined state and its [`jaxdeq.Report`][]
        (see [`jaxdeq.attractor.AttractorRefiner.refine`][]).
        """
        y, report = self.refine(
            self.proposal(x), steps=steps, key=key, backward_stats=backward_stats
        )
        return self.decode(y), report


AttractorRefiner.__init__.__doc__ = r"""**Arguments:**

- `backbone`: `backbone(x) -> c`, any callable (typically an equinox Module).
- `refiner`: `refiner(u) -> R(u)` of the same structure as $c$, e.g. a
    [`jaxdeq.attractor.GatedRefiner`][]. Weight-tied: the same refiner at every step.
- `decoder`: `decoder(y) -> output`, or `None` to return the state itself.
- `solver`: the forward solver (default `jaxdeq.Anderson(rtol=1e-3, atol=1e-6,
    memory=5, ridge=1e-4)`); any jaxdeq or optimistix fixed-point solver or root
    finder.
- `adjoint`: the backward mode (default `jaxdeq.PhantomAdjoint(steps=2)`).
- `min_steps`: the solver takes at least this many steps before it may stop
    (failures stop at once).
- `max_steps`: the step budget of the solve.
- `injection`: `"persistent"` ($F(y; c) = c + R(y + c)$, default) or `"initial"`
    ($F(y) = R(y)$, the proposal only as starting point).
- `jacobian_weight`: weight of the Jacobian penalty reported in
    `report.extra["jacobian_penalty"]` when a `key` is passed (0 disables it).
- `throw`: raise when a solve fails (default `False`: failures are reported per
    sample in `report.result`, and training goes on).
"""


def evaluate_budgets(
    model: AttractorRefiner,
    inputs: PyTree[Array | np.ndarray],
    targets: PyTree[Array | np.ndarray],
    metrics: Callable[[Any, Any], dict[str, Array]],
    budgets: Sequence[int | None] = (0, 1, None),
    *,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Evaluate a trained attractor model at several refinement budgets.

    Shows whether the solver can be removed at inference: the metrics when decoding
    the proposal ($T = 0$), after one refinement step ($T = 1$) and at the
    converged fixed point (`None`), together with the mean steps, the fraction of
    samples converged and the internalization $\\|y - c\\| / \\|c\\|$.

    **Arguments:**

    - `model`: the attractor model.
    - `inputs`, `targets`: pytrees batched along the leading axis of every leaf.
        `targets` may carry anything the metrics need besides the labels (e.g.
        `(labels, mask)`); it is chunked together with the inputs.
    - `metrics`: `metrics(outputs, targets) -> {name: per-example values}` for one
        chunk (each value of shape `(chunk,)`, so means over chunks are exact).
    - `budgets`: the budgets to evaluate; `None` means solve to tolerance.
    - `batch_size`: examples per compiled call.

    **Returns:**

    `{"T=0": {...}, "T=1": {...}, "converged": {...}}`: for each budget the mean of
    every metric and `steps`, `converged`, `internalization`.
    """
    check_positive_int("evaluate_budgets", "batch_size", batch_size)
    num = jtu.tree_leaves(inputs)[0].shape[0]
    for leaf in jtu.tree_leaves((inputs, targets)):
        if jnp.shape(leaf)[:1] != (num,):
            raise ValueError(
                "evaluate_budgets: every leaf of `inputs` and `targets` must have "
                f"the same leading (batch) size {num}; got shape {jnp.shape(leaf)}."
            )
    results = {}
    for budget in budgets:
        name = "converged" if budget is None else f"T={budget}"
        totals: dict[str, float] = {}
        for start in range(0, num, batch_size):
            part = slice(start, start + batch_size)
            chunk, target = jtu.tree_map(lambda a, p=part: a[p], (inputs, targets))
            outputs, report = _batched(model, chunk, budget)
            values = dict(metrics(outputs, target))
            values["steps"] = report.num_steps
            values["converged"] = report.successful
            values["internalization"] = report.extra["internalization"]
            for key, value in values.items():
                value = np.asarray(value, np.float64)
                totals[key] = totals.get(key, 0.0) + float(np.sum(value))
        results[name] = {key: total / num for key, total in totals.items()}
    return results


@eqx.filter_jit
def _batched(model, inputs, budget):
    return jax.vmap(lambda x: model(x, steps=budget))(inputs)
