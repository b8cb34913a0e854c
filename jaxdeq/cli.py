"""The `jaxdeq` command.

`jaxdeq` (or `jaxdeq digits`) trains a small deep equilibrium classifier on the
scikit-learn digits and prints, per epoch, the loss, the accuracies and how the
forward and backward solves went. Further commands are added as subparsers in
`_parser`.
"""

import argparse
import dataclasses
import signal
import sys
import time
import typing
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Float, PRNGKeyArray

from . import (
    __version__,
    Anderson,
    BackwardStats,
    Broyden,
    DEQ,
    ImplicitAdjoint,
    JacobianFreeAdjoint,
    NeumannAdjoint,
    PhantomAdjoint,
)
from .data import load_digits


_SOLVERS = ("anderson", "broyden", "picard")
_SOLVE_MODELS = (
    "cake-eating",
    "growth",
    "merton",
    "lqr",
    "brock-mirman",
    "huggett",
    "aiyagari",
)
_ADJOINTS = ("implicit", "phantom", "jfb", "neumann")
# Which `jaxdeq solve` options apply to which models; any other is refused.
_PINN_MODELS = ("cake-eating", "growth", "merton", "lqr")
_SOLVE_OPTIONS = {
    "seed": _PINN_MODELS + ("brock-mirman",),
    "small": _PINN_MODELS + ("brock-mirman",),
    "steps": _PINN_MODELS,
    "dim": ("lqr",),
    "horizon": ("merton",),
    "grid_size": ("huggett", "aiyagari"),
    "rho": ("huggett", "aiyagari"),
}
_EVAL_BATCH = 512
_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


#
# Argument parsing
#


def _bounded(convert, description, accept):
    """An argparse type: `convert` the text, then require `accept(value)`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_int = _bounded(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = _bounded(int, "a non-negative integer", lambda v: v >= 0)
_positive_float = _bounded(
    float, "a positive number", lambda v: v > 0 and bool(np.isfinite(v))
)


def _add_digits_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--epochs", type=_positive_int, default=8, help="training epochs (default: 8)"
    )
    parser.add_argument(
        "--hidden",
        type=_positive_int,
        default=64,
        help="size of the equilibrium state (default: 64)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        help="minibatch size (default: 64)",
    )
    parser.add_argument(
        "--lr",
        type=_positive_float,
        default=3e-3,
        help="Adam step size (default: 3e-3)",
    )
    parser.add_argument(
        "--solver",
        choices=_SOLVERS,
        default="anderson",
        help="forward solver: jaxdeq.Anderson, jaxdeq.Broyden or "
        "optimistix.FixedPointIteration (default: anderson)",
    )
    parser.add_argument(
        "--adjoint",
        choices=_ADJOINTS,
        default="implicit",
        help="backward mode: jaxdeq.ImplicitAdjoint, PhantomAdjoint, "
        "JacobianFreeAdjoint or NeumannAdjoint (default: implicit)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="seed of the split and the init (default: 0)",
    )
    parser.add_argument(
        "--max-steps",
        type=_positive_int,
        default=50,
        help="forward solver step budget (default: 50)",
    )
    parser.add_argument(
        "--tol",
        type=_positive_float,
        default=1e-4,
        help="forward relative tolerance, ||f(z) - z|| <= tol ||f(z)|| (default: 1e-4)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdeq",
        description="Deep equilibrium models in JAX. With no command, runs `digits`.",
        epilog="Run `jaxdeq COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"jaxdeq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    digits = commands.add_parser(
        "digits",
        help="train a DEQ classifier on the scikit-learn digits (the default)",
        description="Train a small DEQ classifier on the 8x8 scikit-learn digits "
        "(no download) and report accuracy and solver statistics per epoch: "
        "forward steps and relative residuals, backward (adjoint) steps and "
        "residuals.",
    )
    _add_digits_arguments(digits)
    digits.set_defaults(handler=_run_digits)
    solve = commands.add_parser(
        "solve",
        help="solve an economic model with a known answer and check it",
        description="Solve an economic model whose answer is known in closed form, "
        "in float64, with a progress bar; print the accuracy against the closed "
        "form and write plots of the value function, policies and errors. "
        "Continuous-time models (cake-eating, growth, merton, lqr) are solved by a "
        "PINN on their HJB equation (Adam, then L-BFGS); brock-mirman is a "
        "discrete-time model solved by a Deep Equilibrium Net and checked by "
        "Euler errors on simulated paths. huggett and aiyagari are heterogeneous-"
        "agent economies in stationary general equilibrium: households by the "
        "implicit upwind finite-difference scheme, the interest rate that clears "
        "the bond (huggett) or capital (aiyagari) market by a root finder; it "
        "prints the prices, the aggregates and the market-clearing error, and "
        "plots policies, densities and the excess supply S(r).",
    )
    solve.add_argument("model", choices=_SOLVE_MODELS, help="the model to solve")
    solve.add_argument(
        "--seed",
        type=_non_negative_int,
        default=None,
        help="PINN and DEQN models: random seed (default: 0)",
    )
    solve.add_argument(
        "--small",
        action="store_true",
        help="PINN and DEQN models: a quick, less accurate run (fewer steps)",
    )
    solve.add_argument(
        "--out",
        default=None,
        help="directory for the plots (default: ./jaxdeq-solve-MODEL)",
    )
    solve.add_argument("--no-plots", action="store_true", help="do not write plots")
    solve.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="cake-eating, growth, merton, lqr: override the number of Adam and of "
        "L-BFGS steps (each)",
    )
    solve.add_argument(
        "--dim",
        type=_positive_int,
        default=None,
        help="lqr: the state dimension (default: 20)",
    )
    solve.add_argument(
        "--horizon",
        type=_positive_float,
        default=None,
        help="merton: a finite horizon T (default: infinite horizon)",
    )
    solve.add_argument(
        "--grid-size",
        type=_positive_int,
        default=None,
        help="huggett, aiyagari: wealth grid points (default: 500 and 1000)",
    )
    solve.add_argument(
        "--rho",
        type=_positive_float,
        default=None,
        help="huggett, aiyagari: the discount rate (default: 0.05)",
    )
    solve.set_defaults(handler=_run_solve)
    _add_train_parser(commands)
    return parser


def _add_train_parser(commands) -> None:
    from .train import RECIPES, TrainConfig

    train = commands.add_parser(
        "train",
        help="train a model family's recipe, with checkpoints, resume and metrics",
        description="Train a recipe data-parallel over the available devices "
        "(batch sharded, parameters replicated), with orbax checkpoints every N "
        "steps and on SIGTERM/SIGINT, --resume from the newest intact checkpoint, "
        "metrics as JSON lines and plots in --run-dir. Recipes (`jaxdeq train RECIPE "
        "--help` for each one's options): "
        + " ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
    )
    recipes = train.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for recipe in RECIPES.values():
        sub = recipes.add_parser(
            recipe.name, help=recipe.description, description=recipe.description
        )
        for group, cls in (("training", TrainConfig), (recipe.name, recipe.options)):
            options = sub.add_argument_group(f"{group} options")
            for field in dataclasses.fields(cls):
                flag = "--" + field.name.replace("_", "-")
                if field.name in ("resume", "progress"):
                    continue
                if field.type in (bool, "bool"):
                    options.add_argument(flag, action="store_true")
                    continue
                kind = type(field.default) if field.default is not None else int
                extra = {}
                if typing.get_origin(field.type) is typing.Literal:
                    extra["choices"] = typing.get_args(field.type)
                options.add_argument(
                    flag,
                    type=kind,
                    default=field.default,
                    dest=field.name,
                    help=f"(default: {field.default})",
                    **extra,
                )
        sub.add_argument(
            "--resume",
            action="store_true",
            help="continue from the newest intact checkpoint in --run-dir, with its "
            "key and data position; refused if the training configuration differs "
            "(unless --force)",
        )
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        sub.set_defaults(handler=_run_train, train_recipe=recipe)


def _run_train(args: argparse.Namespace) -> int:
    from .train import plot_history, train, TrainConfig

    recipe = args.train_recipe
    values = vars(args)
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        # Every value is checked here, before any compute.
        config = TrainConfig(
            **{k: values[k] for k in config_fields if k in values and k != "progress"},
            progress=not args.no_progress,
        )
        if config.run_dir == TrainConfig.run_dir:
            config = dataclasses.replace(config, run_dir=f"runs/{recipe.name}")
        options = recipe.options(
            **{f.name: values[f.name] for f in dataclasses.fields(recipe.options)}
        )
        result = train(recipe, config, options)
    except (TypeError, ValueError) as e:
        print(f"jaxdeq train: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"jaxdeq train: error: {e}", file=sys.stderr)
        return 1
    if result.history:
        last = result.history[-1]
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in last.items() if k not in ("time", "step")
        )
        print(f"step {result.step}/{config.steps}: {shown}")
        plot = plot_history(result.history, f"{config.run_dir}/training.png")
        print(f"metrics: {config.run_dir}/metrics.jsonl  plots: {plot}")
    if result.interrupted:
        print("interrupted; resume with the same command and --resume.")
        # The shell's convention: 128 + the signal's number (SIGTERM 143, SIGINT 130).
        return 128 + (result.signal or signal.SIGINT)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxdeq` command.

    **Arguments:**

    - `argv`: the arguments without the program name; `None` reads `sys.argv[1:]`.
        With no command the `digits` job runs, and its options may be given
        directly (`jaxdeq --epochs 3`).

    **Returns:**

    The exit status, `0` on success. Bad arguments raise `SystemExit(2)` with a
    message on standard error, as argparse does.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in _TOP_LEVEL_FLAGS):
        argv = ["digits", *argv]
    args = _parser().parse_args(argv)
    return args.handler(args)


#
# The digits job
#


class _Cell(eqx.Module):
    """`z -> tanh(W z + U u + b)`: the equilibrium map of the classifier."""

    weight: eqx.nn.Linear
    injection: eqx.nn.Linear

    def __init__(self, hidden: int, *, key: PRNGKeyArray):
        wkey, ukey = jr.split(key)
        weight = eqx.nn.Linear(
            hidden, hidden, use_bias=False, dtype=jnp.float32, key=wkey
        )
        # Start well inside the contractive regime (spectral norm about 0.3) so the
        # first solves are short; training may grow W.
        self.weight = eqx.tree_at(lambda w: w.weight, weight, 0.25 * weight.weight)
        self.injection = eqx.nn.Linear(hidden, hidden, dtype=jnp.float32, key=ukey)

    def __call__(
        self, z: Float[Array, " hidden"], u: Float[Array, " hidden"]
    ) -> Float[Array, " hidden"]:
        return jnp.tanh(self.weight(z) + self.injection(u))


class _Classifier(eqx.Module):
    encoder: eqx.nn.Linear
    deq: DEQ
    head: eqx.nn.Linear

    def __init__(self, deq_kwargs: dict, hidden: int, *, key: PRNGKeyArray):
        ekey, ckey, hkey = jr.split(key, 3)
        self.encoder = eqx.nn.Linear(64, hidden, dtype=jnp.float32, key=ekey)
        cell = _Cell(hidden, key=ckey)
        self.deq = DEQ(cell, jnp.zeros(hidden, jnp.float32), **deq_kwargs)
        self.head = eqx.nn.Linear(hidden, 10, dtype=jnp.float32, key=hkey)

    def __call__(self, x, probe=None):
        z, report = self.deq(self.encoder(x), backward_stats=probe)
        stats = {
            "num_steps": report.num_steps,
            "rel_residual": report.rel_residual,
            "success": report.successful,
        }
        return self.head(z), stats


def _solver(name: str, tol: float):
    atol = tol * 1e-2
    if name == "anderson":
        return Anderson(rtol=tol, atol=atol)
    if name == "broyden":
        return Broyden(rtol=tol, atol=atol)
    return optx.FixedPointIteration(rtol=tol, atol=atol, norm=_max_norm)


def _max_norm(tree) -> Array:
    # optimistix.FixedPointIteration starts its error at `jnp.array(inf)`, of the
    # default float dtype; match it so that a float32 state also works when
    # `jax_enable_x64` is on.
    return optx.max_norm(tree).astype(jnp.asarray(jnp.inf).dtype)


def _adjoint(name: str, tol: float):
    if name == "implicit":
        # The adjoint system w = v + J^T w solved by Anderson (the default backward
        # solver), to a tenth of the forward tolerance and relative only (cotangents
        # of a mean loss are tiny); its steps compare directly with the forward steps.
        return ImplicitAdjoint(linear_solver=Anderson(rtol=0.1 * tol, atol=0.0))
    if name == "phantom":
        return PhantomAdjoint(steps=5, damping=0.5)
    if name == "jfb":
        return JacobianFreeAdjoint(monitor=True)
    return NeumannAdjoint(terms=5, monitor=True)


def _make_step(optim: optax.GradientTransformation):
    @eqx.filter_jit
    def step(model, opt_state, x, y, probe):
        def loss_fn(model_and_probe):
            model, probe = model_and_probe
            logits, stats = jax.vmap(model)(x, probe)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.mean(loss), stats

        (loss, forward), (grads, backward) = eqx.filter_value_and_grad(
            loss_fn, has_aux=True
        )((model, probe))
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optim.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss, forward, backward

    return step


@eqx.filter_jit
def _predict(model, x):
    logits, stats = jax.vmap(model)(x)
    return jnp.argmax(logits, axis=-1), stats


def _evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    # Fixed-size chunks (the last one padded) so evaluation compiles once.
    predictions, stats = [], []
    for start in range(0, len(x), _EVAL_BATCH):
        chunk = x[start : start + _EVAL_BATCH]
        size = len(chunk)
        padded = np.zeros((_EVAL_BATCH, x.shape[1]), np.float32)
        padded[:size] = chunk
        pred, chunk_stats = _predict(model, jnp.asarray(padded))
        predictions.append(np.asarray(pred)[:size])
        stats.append({k: np.asarray(v)[:size] for k, v in chunk_stats.items()})
    accuracy = float(np.mean(np.concatenate(predictions) == y))
    return accuracy, {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.1e}"


def _summaries(forward: dict, backward: BackwardStats) -> tuple[str, str]:
    steps = np.asarray(forward["num_steps"])
    rel = np.asarray(forward["rel_residual"])
    failed = int(np.sum(~np.asarray(forward["success"])))
    forward_text = (
        f"forward steps mean {steps.mean():.1f} max {steps.max():.0f} | "
        f"rel residual mean {_fmt(rel.mean())} max {_fmt(rel.max())} | "
        f"forward failed {failed}"
    )
    steps = np.asarray(backward.num_steps)
    residual = np.asarray(backward.rel_residual)
    # NaN means "not measured" (PhantomAdjoint).
    residual_max = np.nanmax(residual) if np.any(np.isfinite(residual)) else np.nan
    failed = int(np.sum(np.asarray(backward.success) < 1))
    backward_text = (
        f"backward steps mean {steps.mean():.1f} max {steps.max():.0f} | "
        f"backward residual max {_fmt(residual_max)} | backward failed {failed}"
    )
    return forward_text, backward_text


def _run_digits(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits(seed=args.seed)
    x_train = x_train.astype(np.float32)
    x_test = x_test.astype(np.float32)
    y_train = y_train.astype(np.int32)
    y_test = y_test.astype(np.int32)
    batch_size = min(args.batch_size, len(x_train))
    batches_per_epoch = len(x_train) // batch_size

    deq_kwargs = dict(
        solver=_solver(args.solver, args.tol),
        adjoint=_adjoint(args.adjoint, args.tol),
        max_steps=args.max_steps,
        throw=False,
    )
    model = _Classifier(deq_kwargs, args.hidden, key=jr.PRNGKey(args.seed))
    optim = optax.adam(args.lr)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    step = _make_step(optim)
    probe = BackwardStats.probe((batch_size,))
    rng = np.random.default_rng(args.seed)

    print(
        f"jaxdeq digits: {len(x_train)} train / {len(x_test)} test samples, "
        f"hidden {args.hidden}, solver {args.solver}, adjoint {args.adjoint}, "
        f"tol {args.tol:g}, max steps {args.max_steps}, batch {batch_size}, "
        f"lr {args.lr:g}, {args.epochs} epochs"
    )
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        order = rng.permutation(len(x_train))
        losses, forwards, backwards = [], [], []
        for i in range(batches_per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            model, opt_state, loss, forward, bstats = step(
                model,
                opt_state,
                jnp.asarray(x_train[index]),
                jnp.asarray(y_train[index]),
                probe,
            )
            losses.append(loss)
            forwards.append(forward)
            backwards.append(bstats)
        if not np.all(np.isfinite(np.asarray(losses))):
            print(
                f"jaxdeq digits: error: the loss became non-finite in epoch {epoch}; "
                "lower --lr (e.g. --lr 1e-3).",
                file=sys.stderr,
            )
            return 1
        forward = jax.tree.map(lambda *v: np.concatenate(v), *forwards)
        backward = jax.tree.map(lambda *v: np.concatenate(v), *backwards)
        train_accuracy, _ = _evaluate(model, x_train, y_train)
        test_accuracy, test_forward = _evaluate(model, x_test, y_test)
        forward_text, backward_text = _summaries(forward, backward)
        print(
            f"epoch {epoch}/{args.epochs} | loss {float(np.mean(losses)):.4f} | "
            f"train accuracy {train_accuracy:.3f} | test accuracy {test_accuracy:.3f} "
            f"| {forward_text} | {backward_text} | "
            f"{time.perf_counter() - epoch_start:.1f}s"
        )
    # `--epochs` is at least 1, so the loop above ran and bound these.
    forward_text, backward_text = _summaries(test_forward, backward)  # pyright: ignore[reportPossiblyUnboundVariable]
    print(
        "summary (forward statistics of the test set, backward statistics of the "
        "last epoch):"
    )
    print(
        f"test accuracy {test_accuracy:.3f} | {forward_text} | {backward_text} | "  # pyright: ignore[reportPossiblyUnboundVariable]
        f"total {time.perf_counter() - start:.1f}s"
    )
    return 0


#
# The solve job
#


class _ProgressBar:
    """A one-line progress bar on standard error, redrawn in place."""

    def __init__(self, width: int = 30):
        self.width = width
        self.phase = None

    def __call__(self, info: dict) -> None:
        if info["phase"] != self.phase and self.phase is not None:
            sys.stderr.write("\n")
        self.phase = info["phase"]
        done = min(info["step"] / max(info["total"], 1), 1.0)
        bar = "#" * int(done * self.width)
        sys.stderr.write(
            f"\r{self.phase:>6} [{bar:<{self.width}}] {info['step']:>6}/"
            f"{info['total']:<6} loss {info['loss']:.3e}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.phase is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


# The accuracy targets of the known-answer models, printed next to each error.
_TARGETS = {"value": 1e-4, "consumption": 1e-3, "risky_share": 1e-3}


def _hjb_model(args: argparse.Namespace):
    from . import econ

    small = args.small
    if args.model == "cake-eating":
        settings = dict(adam_steps=1000, lbfgs_steps=1000) if small else {}
        return econ.CakeEating(), settings  # pyright: ignore[reportCallIssue]
    if args.model == "growth":
        settings = dict(adam_steps=1500, lbfgs_steps=1500) if small else {}
        return econ.Growth(), settings  # pyright: ignore[reportCallIssue]
    if args.model == "merton":
        model = econ.Merton(horizon=args.horizon)  # pyright: ignore[reportCallIssue]
        points = 1024 if args.horizon is not None else 256
        settings = dict(num_points=points)
        if small:
            settings.update(adam_steps=1000, lbfgs_steps=1000)
        return model, settings
    model = econ.LQR(dim=args.dim)  # pyright: ignore[reportCallIssue]
    settings = dict(num_points=4096, width=64, resample_every=100, lbfgs_steps=2000)
    if small:
        settings.update(num_points=1024, adam_steps=1000, lbfgs_steps=1000)
    return model, settings


def _run_equilibrium(args: argparse.Namespace, out: str) -> int:
    from . import econ
    from ._solution import RESULTS

    options = {}
    if args.grid_size is not None:
        options["grid_size"] = args.grid_size
    if args.rho is not None:
        options["rho"] = args.rho
    cls = econ.Huggett if args.model == "huggett" else econ.Aiyagari
    try:
        economy = cls(**options)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"jaxdeq solve {args.model}: {e}") from None
    household = economy.household()
    print(
        f"jaxdeq solve {args.model} (float64): {household.grid_size} wealth points "
        f"on [{float(household.a_min):g}, {float(household.a_max):g}], "
        f"{household.num_states} income states, rho = {float(household.rho):g}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        # A grid too coarse for the distribution is reported as a line of output
        # (with its error estimate), not as a Python warning.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", econ.CoarseGridWarning)
            eq = econ.solve_equilibrium(economy)
            jax.block_until_ready(eq.r)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"jaxdeq solve {args.model}: {e}") from None
    first = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", econ.CoarseGridWarning)
        eq = econ.solve_equilibrium(economy)
        jax.block_until_ready(eq.r)
    again = time.perf_counter() - start
    h = eq.household
    print(f"interest rate r* = {float(eq.r):.8f}, wage w = {float(eq.prices.w):.6g}")
    for name, value in eq.aggregates.items():
        if name not in ("r", "w"):
            print(f"{name:>20}: {float(value):.6g}")
    mass = ", ".join(f"{float(m):.4f}" for m in h.mass_at_limit)
    print(f"{'mass at the limit':>20}: {mass} (by income state)")
    clearing = abs(float(eq.excess_supply))
    print(
        f"market-clearing error |S(r*)| = {clearing:.2e} after {int(eq.steps)} "
        f"root-finding steps; HJB residual {float(h.hjb_residual):.1e}, KFE "
        f"residual {float(h.kfe_residual):.1e}"
    )
    print(f"time: {first:.2f} s with compilation, {again:.3f} s compiled")
    ok = bool(eq.result == RESULTS.successful) and clearing < 1e-8
    print(f"check: {'PASS' if ok else 'FAIL'} (|S(r*)| < 1e-8)")
    for warning in caught:
        if issubclass(warning.category, econ.CoarseGridWarning):
            print(f"warning: {warning.message}")
    if not args.no_plots:
        for path in econ.plot_equilibrium(economy, eq, out):
            print(f"wrote {path}")
    return 0 if ok else 1


def _refuse_inapplicable(args: argparse.Namespace) -> None:
    """Refuse an option that does not apply to the chosen model, rather than ignore
    it silently."""
    for name, models in _SOLVE_OPTIONS.items():
        value = getattr(args, name)
        given = value is not None and value is not False
        if given and args.model not in models:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(
                f"jaxdeq solve {args.model}: {flag} is not supported for "
                f"{args.model}: it applies only to {', '.join(models)}. Remove it."
            )


def _run_solve(args: argparse.Namespace) -> int:
    _refuse_inapplicable(args)
    if args.seed is None:
        args.seed = 0
    if args.dim is None:
        args.dim = 20
    jax.config.update("jax_enable_x64", True)
    from . import econ

    out = args.out or f"jaxdeq-solve-{args.model}"
    if args.model in ("huggett", "aiyagari"):
        return _run_equilibrium(args, out)
    bar = _ProgressBar()
    start = time.perf_counter()
    print(f"jaxdeq solve {args.model} (float64, seed {args.seed})", flush=True)
    if args.model == "brock-mirman":
        if args.steps is not None:
            raise SystemExit(
                "jaxdeq solve brock-mirman: --steps is not supported; use --small."
            )
        result = econ.solve_brock_mirman(seed=args.seed, small=args.small, progress=bar)
        bar.close()
        euler = result.solution.euler
        print(f"Euler errors on fresh simulated paths: {euler}")
        print(
            f"mean log10 Euler error {euler.log10_mean:.2f} (target < -5), "
            f"max {euler.log10_max:.2f} (target < -4)"
        )
        print(
            f"next-period capital vs closed form: relative L2 "
            f"{result.capital_rel_l2:.2e}, max relative {result.capital_max_rel:.2e}"
        )
        paths = [] if args.no_plots else econ.plot_brock_mirman(result, out)
    else:
        model, settings = _hjb_model(args)
        if args.steps is not None:
            settings.update(adam_steps=args.steps, lbfgs_steps=args.steps)
        fields = ", ".join(
            f"{f.name}={getattr(model, f.name)}" for f in dataclasses.fields(model)
        )
        print(f"model: {type(model).__name__}({fields})", flush=True)
        sol = econ.solve_hjb(model, key=jr.PRNGKey(args.seed), progress=bar, **settings)
        bar.close()
        report = sol.report
        res = report["residual"]
        print(
            "HJB residual (relative) at 1000 evaluation points: mean "
            f"{res['mean_abs']:.2e}, max {res['max_abs']:.2e}"
        )
        for name, target in _TARGETS.items():
            if name in report:
                err = report[name]["rel_l2"]
                status = "ok" if err <= target else "MISSED"
                print(
                    f"{name:>12}: relative L2 error {err:.2e} against the closed "
                    f"form (target {target:.0e}: {status})"
                )
        for name in report:
            if (
                name not in _TARGETS
                and isinstance(report[name], dict)
                and name != "residual"
            ):
                print(f"{name:>12}: relative L2 error {report[name]['rel_l2']:.2e}")
        paths = [] if args.no_plots else econ.plot_hjb(sol, out)
    for path in paths:
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
