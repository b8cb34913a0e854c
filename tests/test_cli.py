import json
import logging
import re

import jax
import numpy as np
import pytest

from jaxdeq.cli import main
from jaxdeq.data import load_digits


# A few seconds of training: enough to see every line, not to learn much.
TINY = ["--hidden", "16", "--batch-size", "128", "--max-steps", "30"]


@pytest.fixture(autouse=True)
def default_dtype_promotion():
    # The command runs with JAX's default (standard) dtype promotion, as a user runs
    # it: optax's Adam, for one, relies on it. The suite's strict promotion stays on
    # for the library's own tests; float64 being enabled stays on here, which checks
    # that the command casts its data to float32.
    with jax.numpy_dtype_promotion("standard"):
        yield


def _summary(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("test accuracy")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.slow
def test_bare_command_runs_digits(capsys, caplog, tmp_path):
    # No subcommand: the digits job (the deq-digits recipe through jaxdeq.train),
    # with its options given directly. Two epochs, and the training step and the
    # evaluation each compile once.
    argv = ["--epochs", "2", *TINY, "--run-dir", str(tmp_path)]
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert sum("jit(sharded_step)" in m for m in compiled) == 1, compiled
    assert sum("jit(classifier_evaluate)" in m for m in compiled) == 1, compiled
    out = capsys.readouterr().out
    assert out.startswith("jaxdeq digits:")
    epoch = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line[:9] for line in epoch] == ["epoch 1/2", "epoch 2/2"], out
    for field in (
        "loss",
        "train accuracy",
        "test accuracy",
        "forward steps mean",
        "rel residual mean",
        "forward failed",
        "backward steps mean",
        "backward rel residual mean",
        "backward failed",
    ):
        assert all(field in line for line in epoch)
    summary = _summary(out)
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", summary).group(1))
    assert 0.3 < accuracy <= 1  # ten classes: chance is 0.1
    steps = float(re.search(r"forward steps mean (\S+)", summary).group(1))
    assert 1 <= steps <= 30
    residual = float(re.search(r"rel residual mean (\S+)", summary).group(1))
    assert residual <= 1e-4
    assert "forward failed 0" in summary
    assert "backward failed 0" in summary
    # The printed figures are those of the run's metrics: the test accuracy is the
    # last evaluation's, the epoch's loss the mean of its steps'.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert f"test accuracy {records[-1]['eval_accuracy']:.3f}" in summary
    per_epoch = len(records) // 2
    loss = np.mean([r["loss"] for r in records[per_epoch:]])
    assert f"loss {loss:.4f}" in epoch[-1]
    assert main(argv) == 2  # the run directory now holds a run
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver, adjoint",
    [("broyden", "phantom"), ("picard", "jfb"), ("anderson", "neumann")],
)
def test_digits_solvers_and_adjoints(capsys, solver, adjoint):
    argv = ["digits", "--epochs", "1", *TINY, "--solver", solver, "--adjoint", adjoint]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"solver {solver}, adjoint {adjoint}" in out
    summary = _summary(out)
    assert "backward steps mean" in summary
    if adjoint == "phantom":
        # PhantomAdjoint does not measure its residual.
        assert "backward rel residual mean n/a" in summary


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: jaxdeq" in out and "digits" in out

    with pytest.raises(SystemExit) as e:
        main(["digits", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--epochs",
        "--hidden",
        "--batch-size",
        "--lr",
        "--solver",
        "--adjoint",
        "--seed",
        "--max-steps",
        "--tol",
        "--run-dir",
    ):
        assert flag in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("jaxdeq ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--solver", "newton"], "invalid choice: 'newton'"),
        (["digits", "--adjoint", "exact"], "invalid choice: 'exact'"),
        (["--epochs", "0"], "expected a positive integer, got '0'"),
        (["--hidden", "ten"], "expected a positive integer, got 'ten'"),
        (["--lr", "-0.1"], "expected a positive number, got '-0.1'"),
        (["--tol", "nan"], "expected a positive number, got 'nan'"),
        (["--seed", "-3"], "expected a non-negative integer, got '-3'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# The data the digits job trains on.


def test_load_digits():
    x_train, y_train, x_test, y_test = load_digits(test_fraction=0.25, seed=3)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    assert x_train.shape[1] == x_test.shape[1] == 64
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == round(0.25 * 1797)
    assert set(np.unique(y_train)) == set(range(10))
    # Standardised with the training statistics only.
    np.testing.assert_allclose(x_train.mean(0), 0, atol=1e-5)
    std = x_train.std(0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))
    assert abs(x_test.mean()) > 1e-4
    # Deterministic for a seed, different across seeds.
    again = load_digits(test_fraction=0.25, seed=3)
    for a, b in zip((x_train, y_train, x_test, y_test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_digits(test_fraction=0.25, seed=4)
    assert not np.array_equal(y_test, other[3])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
@pytest.mark.unchecked
def test_load_digits_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=fraction)


def test_solve_help_and_bad_model(capsys):
    with pytest.raises(SystemExit) as info:
        main(["solve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for model in (
        "cake-eating",
        "growth",
        "merton",
        "lqr",
        "brock-mirman",
        "huggett",
        "aiyagari",
    ):
        assert model in out
    with pytest.raises(SystemExit) as info:
        main(["solve", "huggett-with-typo"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--steps is not supported"):
        main(["solve", "brock-mirman", "--steps", "3"])
    # Bad economies fail before any compilation, with the library's message.
    with pytest.raises(SystemExit, match="at least 3"):
        main(["solve", "huggett", "--grid-size", "2"])


@pytest.mark.slow
def test_solve_reaches_the_closed_form_and_writes_plots(capsys, tmp_path):
    # 300 Adam and 300 L-BFGS steps: with the state constraint by construction and
    # L-BFGS in float64 the cake-eating PINN is already far below its targets (the
    # benchmark runs the full solve). Every line and every plot.
    argv = ["solve", "cake-eating", "--steps", "300", "--out", str(tmp_path)]
    argv.append("--no-compile-cache")  # not the user's cache directory
    assert main(argv) == 0
    out = capsys.readouterr().out
    value = re.search(r"value: relative L2 error ([0-9.e+-]+) .*target 1e-04: ok", out)
    consumption = re.search(r"consumption: relative L2 error ([0-9.e+-]+) .*: ok", out)
    assert value and consumption, out
    assert float(value.group(1)) < 1e-5
    assert "HJB residual" in out
    for name in ("value", "policies", "errors", "loss"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
