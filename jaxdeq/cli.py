"""The `jaxdeq` command.

`jaxdeq` (or `jaxdeq digits`) trains a small deep equilibrium classifier on the
scikit-learn digits, the `deq-digits` recipe through `jaxdeq.train.train`, and
prints, per epoch, the loss, the accuracies and how the forward and backward solves
went. Further commands are added as subparsers in `_parser`.
"""

import argparse
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
import typing
from collections.abc import Sequence

import numpy as np

from . import __version__
from ._cli_args import (
    _non_negative_int as _non_negative_int,
    _positive_float as _positive_float,
    _positive_int as _positive_int,
)
from ._cli_solve import add_solve_parser
from .train._recipes.deq_digits import ADJOINTS as _ADJOINTS, SOLVERS as _SOLVERS


_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


#
# Argument parsing
#


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
        help="seed of the initialisation and the batch order; the held-out digits "
        "are always the same (default: 0)",
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
    parser.add_argument(
        "--run-dir",
        default=None,
        help="keep the run's metrics (metrics.jsonl) and final checkpoint here "
        "(default: a temporary directory, removed at the end)",
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
        "(no download), the deq-digits recipe of `jaxdeq train`, and report "
        "accuracy and solver statistics per epoch: forward steps, relative "
        "residuals and failures, backward (adjoint) steps, residuals and "
        "failures.",
    )
    _add_digits_arguments(digits)
    digits.set_defaults(handler=_run_digits)
    add_solve_parser(commands)
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


def _run_digits(args: argparse.Namespace) -> int:
    """The `deq-digits` recipe through `jaxdeq.train.train`, one line per epoch."""
    from .train import DEQ_DIGITS, DEQDigitsOptions, train, TrainConfig

    start = time.perf_counter()
    options = DEQDigitsOptions(
        hidden=args.hidden,
        solver=args.solver,
        adjoint=args.adjoint,
        tol=args.tol,
        max_solver_steps=args.max_steps,
    )
    train_data, test_data = DEQ_DIGITS.data(options)
    num_train, num_test = len(train_data["y"]), len(test_data["y"])
    batch_size = min(args.batch_size, num_train)
    per_epoch = num_train // batch_size
    steps = args.epochs * per_epoch
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="jaxdeq-digits-")
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        devices=1,
        log_every=1,
        eval_every=per_epoch,
        checkpoint_every=steps,
        run_dir=run_dir,
        progress=False,
    )
    print(
        f"jaxdeq digits: {num_train} train / {num_test} test samples, "
        f"hidden {args.hidden}, solver {args.solver}, adjoint {args.adjoint}, "
        f"tol {args.tol:g}, max steps {args.max_steps}, batch {batch_size}, "
        f"lr {args.lr:g}, {args.epochs} epochs",
        flush=True,
    )
    summary = _EpochSummary(args.epochs, per_epoch, batch_size, num_test)
    try:
        result = train(DEQ_DIGITS, config, options, log=print, callback=summary.add)
    except (TypeError, ValueError) as e:
        print(f"jaxdeq digits: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError:
        print(
            f"jaxdeq digits: error: the loss became non-finite in epoch "
            f"{summary.epoch + 1}; lower --lr (e.g. --lr 1e-3).",
            file=sys.stderr,
        )
        return 1
    finally:
        if args.run_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    if result.interrupted:
        # The shell's convention: 128 + the signal's number (SIGINT 130).
        return 128 + (result.signal or signal.SIGINT)
    summary.close(time.perf_counter() - start)
    if args.run_dir is not None:
        print(f"metrics and checkpoint: {args.run_dir}")
    return 0


def _fmt(value: float | np.floating) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.1e}"


class _EpochSummary:
    """Prints one line per epoch from the run's metric records (one per step, the
    held-out evaluation in the epoch's last), under the solve report's names:
    `num_steps`, `rel_residual`, `successful`, and the backward solve's
    `backward_num_steps`, `backward_rel_residual`, `backward_success`."""

    def __init__(self, epochs: int, per_epoch: int, batch_size: int, num_test: int):
        self.epochs, self.per_epoch = epochs, per_epoch
        self.batch_size, self.num_test = batch_size, num_test
        self.epoch, self.records = 0, []
        self.since = time.time()

    def _solves(self, records, prefix, count) -> str:
        steps = np.mean([r[f"{prefix}num_steps"] for r in records])
        residual = np.mean([r[f"{prefix}rel_residual"] for r in records])
        # Fractions of `count` examples, back to whole numbers.
        failed = sum(round((1 - r[f"{prefix}successful"]) * count) for r in records)
        return (
            f"forward steps mean {steps:.1f} | rel residual mean {_fmt(residual)} | "
            f"forward failed {failed}"
        )

    def _backward(self) -> str:
        records = self.records
        steps = np.mean([r["backward_num_steps"] for r in records])
        residual = np.mean([r["backward_rel_residual"] for r in records])
        failed = sum(
            round((1 - r["backward_success"]) * self.batch_size) for r in records
        )
        # NaN means "not measured" (PhantomAdjoint).
        return (
            f"backward steps mean {steps:.1f} | backward rel residual mean "
            f"{_fmt(residual)} | backward failed {failed}"
        )

    def add(self, record: dict) -> None:
        self.records.append(record)
        if len(self.records) < self.per_epoch:
            return
        self.epoch += 1
        records, last, backward = self.records, self.records[-1], self._backward()
        print(
            f"epoch {self.epoch}/{self.epochs} | "
            f"loss {np.mean([r['loss'] for r in records]):.4f} | "
            f"train accuracy {np.mean([r['accuracy'] for r in records]):.3f} | "
            f"test accuracy {last['eval_accuracy']:.3f} | "
            f"{self._solves(records, '', self.batch_size)} | {backward} | "
            f"{last['time'] - self.since:.1f}s",
            flush=True,
        )
        self.since, self.last, self.backward = last["time"], last, backward
        self.records = []

    def close(self, total: float) -> None:
        print(
            "summary (forward statistics of the test set, backward statistics of "
            "the last epoch):"
        )
        print(
            f"test accuracy {self.last['eval_accuracy']:.3f} | "
            f"{self._solves([self.last], 'eval_', self.num_test)} | {self.backward} "
            f"| total {total:.1f}s"
        )
