"""The `attractor-sudoku` recipe: an attractor model solving Sudoku puzzles."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ..._adjoint import PhantomAdjoint
from ..._solver.anderson import Anderson
from ...attractor import (
    AttentionBlock,
    AttractorRefiner,
    GatedRefiner,
    TokenBackbone,
    TokenDecoder,
)
from ...data import sudoku_augment, sudoku_peers, sudoku_puzzles
from .._config import check_options, Recipe, require
from ._classifier import loosened, report_metrics


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
        check_options(
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
        require(
            self,
            self.dim % self.heads == 0,
            f"`dim` ({self.dim}) must be a multiple of `heads` ({self.heads}).",
        )
        require(
            self,
            self.min_solver_steps <= self.max_solver_steps,
            f"`min_solver_steps` ({self.min_solver_steps}) must not exceed "
            f"`max_solver_steps` ({self.max_solver_steps}).",
        )
        require(
            self,
            self.min_givens <= self.max_givens <= 81,
            "need 17 <= min_givens <= max_givens <= 81 (17 is the fewest givens "
            f"of any proper Sudoku), got {self.min_givens}, {self.max_givens}.",
        )


def _attractor_init(key, options):
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
    return eqx.tree_at(lambda m: m.solver, model, loosened(model.solver))


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
        **report_metrics(report),
        # The report's own `extra` key.
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
        **report_metrics(report),
        "internalization": jnp.mean(
            report.extra["internalization"].astype(jnp.float32)
        ),
        "accuracy_T0": cells0,
        "exact_T0": exact0,
    }


def _attractor_data(options):
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
