"""`jaxdeq solve`: every flag acts or is refused, the help fits each model, the
printed figures are all in result.json, and JAX's persistent compilation cache
makes a second run faster."""

import argparse
import contextlib
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeq
from jaxdeq import _cli_solve, econ
from jaxdeq.cli import _parser, main


@pytest.fixture(autouse=True)
def default_dtype_promotion():
    # The command runs with JAX's default dtype promotion, as a user runs it.
    with jax.numpy_dtype_promotion("standard"):
        yield


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["solve", *argv])


def _run(argv: list[str], cache_home: pathlib.Path) -> tuple[int, str, str]:
    """`jaxdeq solve ARGV` in this process, with the compile cache under
    `cache_home`; returns the exit status, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache_home))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["solve", *argv])
    return code, out.getvalue(), err.getvalue()


#
# Fast: the parser, the help, the pieces
#


def test_help_fits_each_model(capsys):
    with pytest.raises(SystemExit) as info:
        main(["solve", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for model in _cli_solve.MODELS:
        assert model in out
    # Closed forms where they exist; none claimed for general equilibrium.
    assert "against the closed form" in out
    assert "which have no closed form" in out
    assert "known answer" not in out
    assert "grid refinement" in out and "Richardson" in out
    # Each model-specific flag names the models it applies to.
    for flag, models in _cli_solve._OPTIONS.items():
        text = out[out.index("--" + flag.replace("_", "-")) :]
        assert models[0] in text[:300], flag


_VALUES = {
    "seed": ["--seed", "1"],
    "small": ["--small"],
    "steps": ["--steps", "5"],
    "dim": ["--dim", "3"],
    "horizon": ["--horizon", "2.0"],
    "grid_size": ["--grid-size", "50"],
    "rho": ["--rho", "0.04"],
}


@pytest.mark.parametrize("option", sorted(_cli_solve._OPTIONS))
def test_every_flag_that_does_not_apply_is_refused(option):
    models = _cli_solve._OPTIONS[option]
    others = [m for m in _cli_solve.MODELS if m not in models]
    assert others
    for model in others:
        with pytest.raises(SystemExit, match="is not supported") as info:
            main(["solve", model, *_VALUES[option]])
        assert "it applies only to" in str(info.value.code)


def test_every_flag_of_a_trained_model_changes_its_problem():
    # The model and the solver configuration handed to jaxdeq.econ: each flag that
    # applies changes them (the seed, which only changes the key, is run end to end
    # in a slow test below).
    for model in _cli_solve._PINN_MODELS:
        _, default = _cli_solve._hjb_problem(_args(model))
        _, small = _cli_solve._hjb_problem(_args(model, "--small"))
        _, steps = _cli_solve._hjb_problem(_args(model, "--steps", "7"))
        assert small != default, model
        assert (steps.adam_steps, steps.lbfgs_steps) == (7, 7)
        assert (default.adam_steps, default.lbfgs_steps) != (7, 7)
    lqr, _ = _cli_solve._hjb_problem(_args("lqr", "--dim", "3"))
    lqr_default, _ = _cli_solve._hjb_problem(_args("lqr"))
    assert isinstance(lqr, econ.LQR) and isinstance(lqr_default, econ.LQR)
    assert lqr.dim == 3 and lqr_default.dim == 20
    merton, _ = _cli_solve._hjb_problem(_args("merton", "--horizon", "2"))
    merton_default, _ = _cli_solve._hjb_problem(_args("merton"))
    assert isinstance(merton, econ.Merton) and isinstance(merton_default, econ.Merton)
    assert merton.horizon == 2.0 and merton_default.horizon is None
    _, full = _cli_solve._brock_mirman_problem(_args("brock-mirman"))
    _, quick = _cli_solve._brock_mirman_problem(_args("brock-mirman", "--small"))
    assert quick.adam_steps < full.adam_steps


def test_every_flag_of_an_economy_changes_it():
    default = _cli_solve._build_economy(_args("huggett"))
    rho = _cli_solve._build_economy(_args("huggett", "--rho", "0.04"))
    grid = _cli_solve._build_economy(_args("aiyagari", "--grid-size", "70"))
    assert float(default.rho) == 0.05 and float(rho.rho) == 0.04
    assert grid.grid_size == 70 and default.grid_size == 500
    # Bad economies fail before any compilation, with the library's message.
    with pytest.raises(SystemExit, match="at least 3"):
        main(["solve", "huggett", "--grid-size", "2"])


def test_richardson_recovers_the_limit_of_a_first_order_sequence():
    def r(h, order=1):
        return 0.03 + 0.7 * h**order

    for n, m in ((500, 250), (100, 50), (4, 8)):
        h_n, h_m = 5.15 / (n - 1), 5.15 / (m - 1)
        error, limit = _cli_solve.richardson(r(h_n), r(h_m), h_n, h_m)
        assert error == pytest.approx(0.7 * h_n, rel=1e-9)
        assert limit == pytest.approx(0.03, rel=1e-9)
        error, limit = _cli_solve.richardson(r(h_n, 2), r(h_m, 2), h_n, h_m, 2)
        assert limit == pytest.approx(0.03, rel=1e-9)
    assert _cli_solve._refined_size(500) == 250
    assert _cli_solve._refined_size(101) == 50
    assert _cli_solve._refined_size(5) == 10  # half would be under 3 points


def test_result_json_is_strict():
    record = {
        "nan": float("nan"),
        "inf": np.float32(np.inf),
        "array": jnp.array([1.0, jnp.nan]),
        "int": np.int64(3),
        "nested": {5: (np.float64(0.25), None, True, "text")},
    }
    plain = json.loads(json.dumps(_cli_solve._plain(record), allow_nan=False))
    assert plain == {
        "nan": None,
        "inf": None,
        "array": [1.0, None],
        "int": 3,
        "nested": {"5": [0.25, None, True, "text"]},
    }


def test_compile_clock_is_jax_own_timing():
    def f(x):
        return jnp.sin(x) @ jnp.cos(x).T + 1.0

    x = jnp.ones((7, 5))
    start = time.time()
    with _cli_solve._CompileClock() as clock:
        jax.block_until_ready(jax.jit(f)(x))
        compiled = clock.seconds()
        jax.block_until_ready(jax.jit(f)(x))  # cached: no compilation
        again = clock.seconds()
    wall = time.time() - start
    assert 0 < compiled <= wall and again == compiled
    assert not clock.compiling
    # Listeners are removed on exit.
    jax.block_until_ready(jax.jit(lambda x: f(x) * 2)(x))
    assert clock.seconds() == compiled


def test_progress_off_a_terminal_is_one_line_per_phase(capsys):
    with _cli_solve._CompileClock() as clock:
        status = _cli_solve._Status(clock)
        assert not status.tty
        with status.phase("solve", "solving"):
            for step in range(50):
                stage = "adam" if step < 30 else "lbfgs"
                status.training(
                    {"phase": stage, "step": step, "total": 50, "loss": 1.0}
                )
        with status.phase("plots", "drawing"):
            pass
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "solving ...",
        "  adam: 50 steps",
        "  lbfgs: 50 steps",
        "drawing ...",
    ]
    assert set(status.phases) == {"solve", "plots"}


def test_cache_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _cli_solve.cache_directory() == tmp_path / "jaxdeq" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _cli_solve.cache_directory() == (
        pathlib.Path("~").expanduser() / ".cache" / "jaxdeq" / "jax"
    )


@pytest.mark.unchecked
def test_plotting_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from jaxdeq.train import plot_history

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    calls = {
        "plot_equilibrium": lambda: econ.plot_equilibrium(None, None, tmp_path),  # pyright: ignore
        "plot_hjb": lambda: econ.plot_hjb(None, tmp_path),  # pyright: ignore
        "plot_brock_mirman": lambda: econ.plot_brock_mirman(None, tmp_path),  # pyright: ignore
        "plot_history": lambda: plot_history([], tmp_path / "training.png"),
    }
    for name, call in calls.items():
        with pytest.raises(ImportError, match=re.escape('pip install "jaxdeq[plots]"')):
            call()
        with pytest.raises(ImportError, match=f"^{name}: needs matplotlib"):
            call()
    assert not any(tmp_path.iterdir())
    # `jaxdeq solve` refuses before solving, and names both ways out.
    with pytest.raises(SystemExit, match=r'jaxdeq\[plots\]".*--no-plots'):
        main(["solve", "huggett", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


#
# Slow: whole runs
#


_NUMBER = re.compile(r"(?<![\w.*^])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?%?(?![\w.])")


def _json_numbers(node, out: list[float]) -> list[float]:
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(float(k) for k in re.findall(r"\d+", str(key)))
            _json_numbers(value, out)
    elif isinstance(node, list):
        for value in node:
            _json_numbers(value, out)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out.append(float(node))
    return out


def _in_record(token: str, numbers: list[float]) -> bool:
    """Whether a printed number is in the record, to the precision printed."""
    percent = token.endswith("%")
    text = token.rstrip("%")
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    tol = 0.5 * 10.0 ** (int(exponent or 0) - decimals) * (1 + 1e-9)
    value = float(text)
    candidates = [(value, tol)]
    if percent:
        candidates.append((value / 100, tol / 100))
    return any(abs(v - x) <= t for v, t in candidates for x in numbers)


def _unrecorded(out: str, record: dict) -> list[str]:
    numbers = _json_numbers(record, [])
    missing = []
    for line in out.splitlines():
        if line.startswith(("wrote ", "compile cache:")):
            continue  # paths
        for token in _NUMBER.findall(line):
            if not _in_record(token, numbers):
                missing.append(f"{token} in {line!r}")
    return missing


def test_the_record_check_can_fail():
    record = {"r": 0.01976119, "top_shares": {"top_1_percent": 0.033}}
    assert _unrecorded("r* 0.01976119, top 1% holds 3.3%", record) == []
    assert _unrecorded("r* 0.01976120", record) == ["0.01976120 in 'r* 0.01976120'"]
    assert _unrecorded("p99 0.3182 and 5 s", record) != []


def _stand_in_solve(result=jaxdeq.RESULTS.successful):
    """A stand-in for the equilibrium solve, for the command's own logic: r* =
    0.03 + 0.5 h on a grid of step h (so the refinement's estimate is known), a
    distribution over the whole grid and made-up policies."""

    def solve(economy):
        household = economy.household()
        grid, step = household.grid, household.step
        n = grid.shape[0]
        r = 0.03 + 0.5 * step
        weights = jnp.linspace(2.0, 1.0, n)[:, None] * jnp.array([[1.0, 0.5]])
        density = weights / (jnp.sum(weights) * step)
        sol = econ.HouseholdSolution(
            grid=grid,
            v=jnp.zeros((n, 2)),
            c=0.1 + 0.05 * (grid - grid[0])[:, None] * jnp.ones((1, 2)),
            s=0.01 - 0.02 * grid[:, None] * jnp.ones((1, 2)),
            density=density,
            prices=economy.prices(r),
            steps=jnp.asarray(3),
            hjb_residual=jnp.asarray(1e-13),
            kfe_residual=jnp.asarray(1e-16),
            result=jaxdeq.RESULTS.successful,  # pyright: ignore[reportArgumentType]
        )
        return econ.EquilibriumSolution(
            r=r,
            household=sol,
            excess_supply=jnp.asarray(2e-15),
            aggregates=economy.aggregates(r, sol),
            steps=jnp.asarray(5),
            result=result,  # pyright: ignore[reportArgumentType]
        )

    return solve


def test_the_command_reports_what_the_solves_return(monkeypatch, tmp_path):
    # The command's logic alone, the solve replaced: grid refinement, the check,
    # the statistics and result.json.
    monkeypatch.setattr(_cli_solve, "_solve_economy", _stand_in_solve())
    argv = ["huggett", "--grid-size", "41", "--no-plots", "--out", str(tmp_path)]
    code, out, _ = _run(argv, tmp_path / "cache")
    assert code == 0, out
    record = json.loads((tmp_path / "result.json").read_text())
    assert _unrecorded(out, record) == []
    step = 5.15 / 40
    refinement = record["grid_refinement"]
    assert refinement["grid_size"] == 20
    assert refinement["error"] == pytest.approx(0.5 * step)
    assert refinement["r_extrapolated"] == pytest.approx(0.03)
    assert refinement["warning"] is True
    assert "check: PASS" in out and "warning: r* on this 41-point grid" in out
    # Mean wealth is positive here: the Gini of wealth is printed as such.
    assert re.search(r"Gini of wealth +0\.\d{4}", out)
    assert record["distribution"]["wealth"]["gini"] > 0

    # A failed solve fails the check, with the solver's message, and exit status 1.
    failed = _stand_in_solve(jaxdeq.RESULTS.max_steps_reached)
    monkeypatch.setattr(_cli_solve, "_solve_economy", failed)
    code, out, _ = _run(argv, tmp_path / "cache")
    assert code == 1
    assert "check: FAIL" in out and "maximum number of solver steps" in out
    assert json.loads((tmp_path / "result.json").read_text())["check"] == {
        "passed": False,
        "solver_successful": False,
        "market_clearing_tolerance": 1e-8,
    }


@pytest.fixture(scope="module")
def huggett_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("huggett")
    out_dir = root / "out"
    code, out, err = _run(
        ["huggett", "--grid-size", "100", "--out", str(out_dir)], root / "cache"
    )
    return code, out, err, out_dir


@pytest.mark.slow
def test_huggett_prints_what_an_economist_reads(huggett_run):
    code, out, err, out_dir = huggett_run
    assert code == 0, out + err
    r = re.search(r"interest rate r\* +([0-9.]+)", out)
    assert r and abs(float(r.group(1)) - 0.0197612) < 1e-6, out
    assert "no closed form" in out
    assert "check: PASS: the bond market clears" in out
    # Huggett's households earn their endowment: no wage. The mass at the limit
    # is printed once, as the fraction of households.
    assert "wage" not in out and "mass_at_limit" not in out
    assert out.count("at the borrowing limit ") == 1
    # A 100-point grid is far from converged: the refinement says so.
    error = re.search(r"discretisation error of r\* +([0-9.e+-]+)", out)
    assert error and float(error.group(1)) > 1e-4
    assert "warning: r* on this 100-point grid" in out
    for text in (
        "wealth percentiles",
        "Gini of a - a_min",
        "top 1%, 10% shares of a - a_min",
        "mean consumption",
        "mean savings",
        "average MPC",
        "windfall",
        "compiling (JAX's own timing",
    ):
        assert text in out, text
    # Off a terminal: one progress line per phase.
    assert [line for line in err.splitlines() if line] == [
        "solving the equilibrium on 100 points ...",
        "grid refinement: the same solve on 50 points ...",
        "drawing the plots ...",
    ]
    for name in ("policies", "density", "excess_supply"):
        assert (out_dir / f"{name}.png").stat().st_size > 1000
    assert not (out_dir / "capital_market.png").exists()


@pytest.mark.slow
def test_result_json_holds_the_printed_figures(huggett_run):
    code, out, _, out_dir = huggett_run
    record = json.loads((out_dir / "result.json").read_text())
    assert _unrecorded(out, record) == []
    assert record["model"] == "huggett"
    assert record["parameters"]["grid_size"] == 100
    assert record["parameters"]["rho"] == pytest.approx(0.05)
    assert record["check"]["passed"] is True
    assert record["grid_refinement"]["warning"] is True
    assert record["grid_refinement"]["order"] == 1
    stats = record["distribution"]
    assert stats["wealth"]["gini"] is None  # mean wealth is zero
    assert 0 < stats["wealth_above_limit"]["gini"] < 1
    assert sorted(record["plots"]) == sorted(
        str(out_dir / f"{n}.png") for n in ("policies", "density", "excess_supply")
    )


@pytest.mark.slow
def test_economy_flags_change_the_equilibrium(huggett_run, tmp_path, monkeypatch):
    _, _, _, out_dir = huggett_run
    base = json.loads((out_dir / "result.json").read_text())
    cache = tmp_path / "cache"
    # --rho and --no-plots, with --out: a different r*, result.json and no plots.
    code, _, _ = _run(
        ["huggett", "--grid-size", "100", "--rho", "0.045", "--no-plots"]
        + ["--out", str(tmp_path / "rho")],
        cache,
    )
    rho = json.loads((tmp_path / "rho" / "result.json").read_text())
    assert code == 0
    assert rho["parameters"]["rho"] == pytest.approx(0.045)
    assert abs(rho["equilibrium"]["r"] - base["equilibrium"]["r"]) > 1e-4
    assert sorted(p.name for p in (tmp_path / "rho").iterdir()) == ["result.json"]
    assert rho["compile_cache"] == str(cache / "jaxdeq" / "jax")
    # --grid-size (50 was solved as the refinement of 100) and --no-compile-cache.
    code, _, _ = _run(
        ["huggett", "--grid-size", "50", "--no-plots", "--no-compile-cache"]
        + ["--out", str(tmp_path / "grid")],
        tmp_path / "unused",
    )
    grid = json.loads((tmp_path / "grid" / "result.json").read_text())
    assert code == 0
    assert grid["equilibrium"]["r"] == pytest.approx(
        base["grid_refinement"]["r"], rel=1e-10
    )
    assert grid["compile_cache"] is None and not (tmp_path / "unused").exists()
    # --no-plots without --out writes nothing at all.
    monkeypatch.chdir(tmp_path / "grid")
    code, out, _ = _run(["huggett", "--grid-size", "50", "--no-plots"], cache)
    assert code == 0 and "wrote" not in out
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["result.json"]


@pytest.mark.slow
def test_aiyagari_prints_its_firm_and_draws_the_capital_market(tmp_path):
    code, out, _ = _run(
        ["aiyagari", "--grid-size", "100", "--out", str(tmp_path)], tmp_path / "c"
    )
    assert code == 0, out
    for text in ("wage w", "capital K", "capital-output ratio K/Y", "Gini of wealth"):
        assert text in out, text
    assert "check: PASS: the capital market clears" in out
    record = json.loads((tmp_path / "result.json").read_text())
    assert _unrecorded(out, record) == []
    for name in ("policies", "density", "excess_supply", "capital_market"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.mark.slow
def test_seed_changes_a_trained_solution(tmp_path):
    errors = []
    for seed in ("0", "1"):
        out_dir = tmp_path / seed
        code, _, _ = _run(
            ["cake-eating", "--steps", "20", "--seed", seed, "--no-plots"]
            + ["--out", str(out_dir)],
            tmp_path / "cache",
        )
        assert code == 0
        record = json.loads((out_dir / "result.json").read_text())
        errors.append(record["errors"]["value"]["rel_l2"])
    assert math.isfinite(errors[0]) and errors[0] != errors[1]


@pytest.mark.slow
def test_second_run_is_faster_with_the_compile_cache(tmp_path):
    # Two fresh processes, as a user runs the command twice; the cache lives in
    # tmp_path. The second loads its programs from the cache.
    command = [
        sys.executable,
        "-c",
        "import sys; from jaxdeq.cli import main; sys.exit(main(sys.argv[1:]))",
        "solve",
        "huggett",
        "--grid-size",
        "40",
        "--no-plots",
    ]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    times, records = [], []
    for run in ("first", "second"):
        start = time.perf_counter()
        subprocess.run(
            [*command, "--out", str(tmp_path / run)],
            env=env,
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
        records.append(json.loads((tmp_path / run / "result.json").read_text()))
    print(f"first run {times[0]:.1f} s, second {times[1]:.1f} s")
    assert records[1]["time"]["compile_cache_hits"] > 0
    assert records[1]["equilibrium"]["r"] == records[0]["equilibrium"]["r"]
    assert times[0] / times[1] > 2.0, times
