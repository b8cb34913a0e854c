"""`jaxdeq solve MODEL`: solve an economic model in float64, check the answer in the
way that fits the model, print what an economist reads off it, and write
`result.json` and plots.

`cli.py` registers the command with `add_solve_parser`; everything else about it is
here. The calls into `jaxdeq.econ` are gathered in one section below.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.monitoring
import jax.random as jr
import numpy as np

from ._cli_args import (
    _non_negative_int as _non_negative_int,
    _positive_float as _positive_float,
    _positive_int as _positive_int,
)
from ._optional import require
from ._solution import RESULTS


MODELS = (
    "cake-eating",
    "growth",
    "merton",
    "lqr",
    "brock-mirman",
    "huggett",
    "aiyagari",
)
_PINN_MODELS = ("cake-eating", "growth", "merton", "lqr")
_EQUILIBRIUM_MODELS = ("huggett", "aiyagari")
# Which options apply to which models; any other is refused, never ignored.
_OPTIONS = {
    "seed": _PINN_MODELS + ("brock-mirman",),
    "small": _PINN_MODELS + ("brock-mirman",),
    "steps": _PINN_MODELS,
    "dim": ("lqr",),
    "horizon": ("merton",),
    "grid_size": _EQUILIBRIUM_MODELS,
    "rho": _EQUILIBRIUM_MODELS,
}
# The accuracy targets of the closed-form models, printed next to each error.
_TARGETS = {"value": 1e-4, "consumption": 1e-3, "risky_share": 1e-3}
# General equilibrium: the market clears when |S(r*)| is below this (float64), and
# a discretisation error of r* above GRID_TOLERANCE is warned about.
CLEARING_TOLERANCE = 1e-8
GRID_TOLERANCE = 1e-4
# The upwind finite-difference scheme is first order in the grid step.
SCHEME_ORDER = 1
# Every program goes into the persistent cache, however quick to compile: a run
# compiles a few large programs and many small ones, which add up.
_CACHE_MIN_COMPILE_SECONDS = 0.0


#
# The parser
#


_DESCRIPTION = """\
Solve an economic model in float64 and check the answer in the way that fits it.
Progress (with compilation) goes to standard error, the results to standard
output, and result.json (every printed figure and the parameters) with the plots
to --out.

models, how they are solved and how they are checked:
  cake-eating, growth, merton, lqr
      continuous time, solved by a PINN on the HJB equation (Adam, then L-BFGS);
      the relative errors of the value function and the policies against the
      closed form, and the HJB residual
  brock-mirman
      discrete time, solved by a Deep Equilibrium Net; Euler errors on fresh
      simulated paths, and the error of next period's capital against the closed
      form
  huggett, aiyagari
      heterogeneous households with income risk in stationary general
      equilibrium, which have no closed form: households by the implicit upwind
      finite-difference scheme, the interest rate r* that clears the bond
      (huggett) or capital (aiyagari) market by a root finder. Checked by market
      clearing, and r*'s discretisation error estimated by grid refinement (the
      same solve on a grid half as fine, Richardson extrapolation for a
      first-order scheme), with a warning above 1e-4. Prints the prices, the
      aggregates and statistics of the wealth distribution (Gini, top shares,
      percentiles, consumption and savings by income state, the average MPC, the
      fraction at the borrowing limit).

JAX's persistent compilation cache is on: a second run of the same model and grid
loads its compiled programs from disk instead of compiling them again."""


def add_solve_parser(commands) -> None:
    """Add the `solve` command to the `jaxdeq` command's subparsers."""
    solve = commands.add_parser(
        "solve",
        help="solve an economic model in float64 and check the answer",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    solve.add_argument("model", choices=MODELS, help="the model to solve")
    solve.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="directory for result.json and the plots (default: "
        "./jaxdeq-solve-MODEL; with --no-plots and no --out nothing is written)",
    )
    solve.add_argument("--no-plots", action="store_true", help="do not draw plots")
    solve.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (default: on, in "
        "$XDG_CACHE_HOME/jaxdeq/jax, or ~/.cache/jaxdeq/jax)",
    )
    solve.add_argument(
        "--seed",
        type=_non_negative_int,
        default=None,
        help="cake-eating, growth, merton, lqr, brock-mirman: the random seed of "
        "the network and the training points (default: 0)",
    )
    solve.add_argument(
        "--small",
        action="store_true",
        help="cake-eating, growth, merton, lqr, brock-mirman: a quicker, less "
        "accurate run (fewer training steps)",
    )
    solve.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="cake-eating, growth, merton, lqr: the number of Adam steps and of "
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
        help="huggett, aiyagari: wealth grid points (default: 500 for huggett, "
        "1000 for aiyagari)",
    )
    solve.add_argument(
        "--rho",
        type=_positive_float,
        default=None,
        help="huggett, aiyagari: the households' discount rate (default: 0.05)",
    )
    solve.set_defaults(handler=run_solve)


def _refuse_inapplicable(args: argparse.Namespace) -> None:
    """Refuse an option that does not apply to the chosen model, rather than ignore
    it silently."""
    for name, models in _OPTIONS.items():
        value = getattr(args, name)
        given = value is not None and value is not False
        if given and args.model not in models:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(
                f"jaxdeq solve {args.model}: {flag} is not supported for "
                f"{args.model}: it applies only to {', '.join(models)}. Remove it."
            )


#
# Compilation: JAX's own timing, the persistent cache, a status line
#


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class _CompileClock:
    """Compilation as JAX times it: the spans of its tracing, lowering to MLIR and
    XLA compilation (or loading from the persistent cache) events, reported
    through `jax.monitoring`. Overlapping spans (a jit traced inside another's
    trace) count once."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        self.open = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def _started(self, event: str, value: float, **kwargs) -> None:
        del value, kwargs
        if event in _COMPILE_EVENTS:
            self.open += 1

    def _ended(self, event: str, start_time: float, end_time: float, **kwargs) -> None:
        del kwargs
        if event in _COMPILE_EVENTS:
            self.open = max(self.open - 1, 0)
            self.spans.append((start_time, end_time))

    def _event(self, event: str, **kwargs) -> None:
        del kwargs
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1
        elif event == "/jax/compilation_cache/cache_misses":
            self.cache_misses += 1

    @property
    def compiling(self) -> bool:
        return self.open > 0

    def __enter__(self) -> "_CompileClock":
        jax.monitoring.register_scalar_listener(self._started)
        jax.monitoring.register_event_time_span_listener(self._ended)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_scalar_listener(self._started)
        jax.monitoring.unregister_event_time_span_listener(self._ended)
        jax.monitoring.unregister_event_listener(self._event)

    def seconds(self, start: float = -math.inf, end: float = math.inf) -> float:
        """Seconds spent compiling between `start` and `end` (`time.time()`)."""
        total, reached = 0.0, start
        for lo, hi in sorted(self.spans):
            lo, hi = max(lo, reached), min(hi, end)
            if hi > lo:
                total += hi - lo
                reached = hi
        return total


def cache_directory() -> pathlib.Path:
    """Where `jaxdeq solve` keeps JAX's persistent compilation cache:
    `$XDG_CACHE_HOME/jaxdeq/jax`, or `~/.cache/jaxdeq/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(base).expanduser() / "jaxdeq" / "jax"


@contextlib.contextmanager
def _compile_cache(enabled: bool) -> Iterator[pathlib.Path | None]:
    """JAX's persistent compilation cache in `cache_directory()` for the duration
    of the run; JAX's previous settings are restored afterwards."""
    if not enabled:
        yield None
        return
    from jax.experimental.compilation_cache import compilation_cache

    path = cache_directory()
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": _CACHE_MIN_COMPILE_SECONDS,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    saved = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    # JAX decides once per process whether the cache is used; let it decide again.
    compilation_cache.reset_cache()
    try:
        yield path
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


@contextlib.contextmanager
def _runtime_errors_as_nan() -> Iterator[None]:
    """Equinox's runtime checks return NaN instead of raising, as with
    `EQX_ON_ERROR=nan`, unless the user set `EQX_ON_ERROR` themselves.

    A raising check is a host callback, and JAX does not put a program with host
    callbacks into its persistent cache. The equilibrium solves differentiate
    through lineax's linear solves, whose tangent solves always carry such a check,
    so without this their programs (the longest to compile) would be compiled
    afresh on every run. The command solves with `throw=False` and reads every
    failure from the solution's `result`, so a check that fires still shows: as a
    failed result or a NaN, and a failed check."""
    from equinox import _errors

    name = "EQX_ON_ERROR"  # read by equinox when it traces a check
    if name in os.environ or not hasattr(_errors, name):
        yield
        return
    saved = getattr(_errors, name)
    setattr(_errors, name, "nan")
    try:
        yield
    finally:
        setattr(_errors, name, saved)


_SPINNER = "|/-\\"


class _Status:
    """Progress on standard error, one phase at a time. On a terminal a status
    line is redrawn in place (a spinner, the seconds so far, whether JAX is
    compiling, and a detail such as a training step); elsewhere (a log file, a
    pipe) each phase and each training stage is one line."""

    def __init__(self, clock: _CompileClock):
        self.clock = clock
        self.stream = sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.detail = ""
        self.stage: str | None = None
        self.phases: dict[str, dict[str, float]] = {}
        self._text = ""
        self._start = 0.0
        self._stop = threading.Event()

    def _draw(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            elapsed = time.time() - self._start
            doing = ", compiling" if self.clock.compiling else ""
            detail = f" | {self.detail}" if self.detail else ""
            self.stream.write(
                f"\r{_SPINNER[frame % 4]} {self._text}: {elapsed:.0f} s{doing}"
                f"{detail}\x1b[K"
            )
            self.stream.flush()
            frame += 1

    @contextlib.contextmanager
    def phase(self, key: str, text: str) -> Iterator[None]:
        """Run a phase named `key` (in result.json) and described by `text`."""
        self._text, self.detail, self.stage = text, "", None
        self._start = start = time.time()
        thread = None
        if self.tty:
            self._stop.clear()
            thread = threading.Thread(target=self._draw, daemon=True)
            thread.start()
        else:
            self.stream.write(f"{text} ...\n")
            self.stream.flush()
        try:
            yield
        finally:
            end = time.time()
            compiling = self.clock.seconds(start, end)
            self.phases[key] = {"seconds": end - start, "compiling": compiling}
            if thread is not None:
                self._stop.set()
                thread.join()
                self.stream.write(
                    f"\r{text}: {end - start:.1f} s ({compiling:.1f} s "
                    "compiling)\x1b[K\n"
                )
                self.stream.flush()

    def training(self, info: dict) -> None:
        """A progress callback for PINN and DEQN training."""
        stage = str(info.get("phase", ""))
        self.detail = (
            f"{stage} step {info['step']}/{info['total']}, loss {info['loss']:.3e}"
        )
        if stage != self.stage:
            self.stage = stage
            if not self.tty:
                self.stream.write(f"  {stage}: {info['total']} steps\n")
                self.stream.flush()


#
# What is printed, and recorded for result.json
#


class _Results:
    """Prints the results and records each printed figure for result.json."""

    def __init__(self, model: str):
        self.record: dict[str, Any] = {"model": model}

    def put(self, path: str, value):
        """Record `value` at the dotted `path` and return it."""
        *parents, leaf = path.split(".")
        node = self.record
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
        return value

    @staticmethod
    def say(text: str = "") -> None:
        print(text, flush=True)

    def write(self, outdir: pathlib.Path) -> pathlib.Path:
        path = outdir / "result.json"
        path.write_text(
            json.dumps(_plain(self.record), indent=2, allow_nan=False) + "\n"
        )
        return path


def _plain(value):
    """`value` as strict JSON: arrays as (nested) lists, NaN and infinities as
    null, keys as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, pathlib.Path):
        return str(value)
    array = np.asarray(value)
    if array.ndim > 0:
        return [_plain(v) for v in array]
    if np.issubdtype(array.dtype, np.integer):
        return int(array)
    number = float(array)
    return number if math.isfinite(number) else None


def _label(text: str, width: int = 32) -> str:
    return f"  {text:<{width}}"


def _sci(value: float) -> str:
    """A power of ten as people write it: 1e-8, not 1e-08."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _round_up(value: float) -> int:
    """`value` rounded up to two significant digits."""
    scale = 10 ** max(int(math.floor(math.log10(value))) - 1, 0)
    return int(math.ceil(value / scale) * scale)


#
# The calls into jaxdeq.econ, in one place
#


def _econ():
    from . import econ

    return econ


def _build_economy(args: argparse.Namespace, grid_size: int | None = None):
    econ = _econ()
    cls = econ.Huggett if args.model == "huggett" else econ.Aiyagari
    options: dict[str, Any] = {}
    if args.rho is not None:
        options["rho"] = args.rho
    grid_size = args.grid_size if grid_size is None else grid_size
    if grid_size is not None:
        options["grid_size"] = grid_size
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"jaxdeq solve {args.model}: {e}") from None


def _solve_economy(economy):
    """The equilibrium, with every failure in its `result` (checked by the
    caller)."""
    econ = _econ()
    solver = econ.FiniteDifference(check_grid=False)
    sol = econ.solve_equilibrium(economy, solver, throw=False)
    jax.block_until_ready(sol)
    return sol


def _distribution_statistics(solution):
    return _econ().distribution_statistics(solution)


def _plot_equilibrium(economy, solution, outdir) -> list:
    return _econ().plot_equilibrium(economy, solution, outdir)


def _income_labels(economy) -> list[str]:
    from .econ._plots import income_state_labels

    return income_state_labels(economy)


def _hjb_problem(args: argparse.Namespace):
    """The model and the PINN settings of a continuous-time model."""
    econ = _econ()
    small = args.small
    if args.model == "cake-eating":
        model = econ.CakeEating()  # pyright: ignore[reportCallIssue]
        settings = dict(adam_steps=1000, lbfgs_steps=1000) if small else {}
    elif args.model == "growth":
        model = econ.Growth()  # pyright: ignore[reportCallIssue]
        settings = dict(adam_steps=1500, lbfgs_steps=1500) if small else {}
    elif args.model == "merton":
        model = econ.Merton(horizon=args.horizon)  # pyright: ignore[reportCallIssue]
        settings = dict(num_points=1024 if args.horizon is not None else 256)
        if small:
            settings.update(adam_steps=1000, lbfgs_steps=1000)
    else:
        dim = 20 if args.dim is None else args.dim
        model = econ.LQR(dim=dim)  # pyright: ignore[reportCallIssue]
        settings = dict(num_points=4096, width=64, resample_every=100)
        settings.update(lbfgs_steps=2000)
        if small:
            settings.update(num_points=1024, adam_steps=1000, lbfgs_steps=1000)
    if args.steps is not None:
        settings.update(adam_steps=args.steps, lbfgs_steps=args.steps)
    return model, econ.PINN(**settings)


def _solve_hjb(model, solver, seed: int, progress: Callable):
    return _econ().solve_hjb(model, solver, key=jr.PRNGKey(seed), progress=progress)


def _plot_hjb(solution, outdir) -> list:
    return _econ().plot_hjb(solution, outdir)


def _brock_mirman_problem(args: argparse.Namespace):
    econ = _econ()
    return econ.BrockMirman(), econ.DEQN.brock_mirman(small=args.small)


def _solve_brock_mirman(model, solver, seed: int, progress: Callable):
    return _econ().solve_deqn(model, solver, key=jr.PRNGKey(seed), progress=progress)


def _plot_brock_mirman(solution, outdir) -> list:
    return _econ().plot_brock_mirman(solution, outdir)


#
# Grid refinement
#


def richardson(
    r_fine: float,
    r_other: float,
    step_fine: float,
    step_other: float,
    order: int = SCHEME_ORDER,
) -> tuple[float, float]:
    """The discretisation error of `r_fine` and the extrapolated value, from the
    same solve on two grids, for a scheme of the given order: with
    r(h) = r* + C h^order, r_fine - r* = (r_other - r_fine) / ((h_other/h_fine)^order
    - 1).

    **Returns:**

    `(error, extrapolated)`: r_fine - r* (signed) and r*.
    """
    ratio = (step_other / step_fine) ** order
    error = (r_other - r_fine) / (ratio - 1)
    return error, r_fine - error


def _refined_size(n: int) -> int:
    """The grid of the refinement check: half as fine, or twice as fine when half
    would have fewer than the 3 points a household needs."""
    return n // 2 if n // 2 >= 3 else 2 * n


#
# The runners
#


def _output_dir(args: argparse.Namespace) -> pathlib.Path | None:
    if args.out is None and args.no_plots:
        return None
    return pathlib.Path(args.out or f"jaxdeq-solve-{args.model}")


def _write_plots(args, status: "_Status", results: "_Results", plot) -> None:
    """`plot(outdir)` unless `--no-plots`; the paths go to the output and to
    result.json."""
    outdir = _output_dir(args)
    if outdir is None or args.no_plots:
        return
    with status.phase("plots", "drawing the plots"):
        paths = plot(outdir)
    results.put("plots", [str(p) for p in paths])
    for path in paths:
        results.say(f"wrote {path}")


def _economy_parameters(economy) -> dict[str, Any]:
    return {
        f.name: getattr(economy, f.name)
        for f in dataclasses.fields(economy)
        if getattr(economy, f.name) is not None
    }


def _by_state(labels: list[str], values, fmt: str) -> str:
    return ", ".join(
        f"{label.split(' (')[0]} {format(float(v), fmt)}"
        for label, v in zip(labels, np.asarray(values))
    )


def _run_equilibrium(args, status: _Status, results: _Results) -> int:
    economy = _build_economy(args)
    household = economy.household()
    n = household.grid_size
    m = _refined_size(n)
    coarse_economy = _build_economy(args, grid_size=m)
    labels = _income_labels(economy)
    is_aiyagari = args.model == "aiyagari"
    a_min, a_max = float(household.a_min), float(household.a_max)
    results.put("parameters", _economy_parameters(economy))
    results.put("parameters.income_states", labels)
    say = results.say

    name = "Aiyagari's" if is_aiyagari else "Huggett's"
    say(
        f"jaxdeq solve {args.model}: {name} economy in continuous time (float64), "
        "which has no closed form"
    )
    z = np.asarray(economy.household().z)
    lam = np.asarray(economy.lam)
    say(
        f"  households: CRRA utility with gamma = {float(economy.gamma):g}, "
        f"discount rate rho = {float(economy.rho):g}, borrowing limit a_min = "
        f"{a_min:g}"
    )
    say(
        f"  income: z = {' or '.join(f'{x:g}' for x in z)}, switching at rates "
        f"{' and '.join(f'{x:g}' for x in lam)}"
    )
    if isinstance(economy, _econ().Aiyagari):
        say(
            f"  firm: Y = A K^alpha L^(1 - alpha) with A = "
            f"{float(economy.productivity):g}, alpha = {float(economy.alpha):.4g}, "
            f"depreciation delta = {float(economy.delta):g}"
        )
    say(f"  wealth grid: {n} points on [{a_min:g}, {a_max:g}]")
    say(
        "  checks: market clearing, and r*'s discretisation error by grid "
        f"refinement (the same solve on {m} points)"
    )

    with status.phase("equilibrium", f"solving the equilibrium on {n} points"):
        eq = _solve_economy(economy)
    with status.phase("refinement", f"grid refinement: the same solve on {m} points"):
        coarse = _solve_economy(coarse_economy)
    solved = bool(eq.result == RESULTS.successful)
    h = eq.household

    # The equilibrium.
    r = results.put("equilibrium.r", float(eq.r))
    clearing = results.put(
        "equilibrium.market_clearing_error", abs(float(eq.excess_supply))
    )
    steps = results.put("equilibrium.root_finding_steps", int(eq.steps))
    hjb = results.put("equilibrium.hjb_residual", float(h.hjb_residual))
    kfe = results.put("equilibrium.kfe_residual", float(h.kfe_residual))
    aggregates = {k: float(v) for k, v in eq.aggregates.items()}
    results.put("equilibrium.aggregates", aggregates)
    if is_aiyagari:
        say("equilibrium: households' wealth = the capital firms demand, K(r)")
    else:
        say("equilibrium: bonds in zero net supply, S(r) = mean wealth = 0")
    say(f"{_label('interest rate r*')}{r:.8f}")
    shown = {
        "w": "wage w",
        "capital": "capital K",
        "labour": "labour L",
        "output": "output Y",
        "capital_output_ratio": "capital-output ratio K/Y",
        "consumption": "aggregate consumption C",
    }
    for key, text in shown.items():
        if key in aggregates and (is_aiyagari or key != "w"):
            say(f"{_label(text)}{aggregates[key]:.6g}")
    say(
        f"{_label('market clearing |S(r*)|')}{clearing:.2e} after {steps} "
        "root-finding steps"
    )
    say(f"{_label('HJB and KFE residuals')}{hjb:.1e}, {kfe:.1e}")

    # Grid refinement.
    r_other = float(coarse.r)
    step_n = (a_max - a_min) / (n - 1)
    step_m = (a_max - a_min) / (m - 1)
    coarse_ok = bool(coarse.result == RESULTS.successful)
    if coarse_ok and solved:
        signed, extrapolated = richardson(r, r_other, step_n, step_m)
    else:
        signed, extrapolated = math.nan, math.nan
    error = abs(signed)
    results.put(
        "grid_refinement",
        {
            "grid_size": m,
            "r": r_other,
            "order": SCHEME_ORDER,
            "error": error,
            "r_extrapolated": extrapolated,
            "tolerance": GRID_TOLERANCE,
        },
    )
    say(
        f"grid refinement: order {SCHEME_ORDER} assumed (the upwind scheme's error is "
        "proportional to the grid step), Richardson extrapolation"
    )
    say(f"{_label(f'r* on {m} points')}{r_other:.8f}")
    if math.isfinite(error):
        say(f"{_label('discretisation error of r*')}{error:.2e}")
        say(f"{_label('extrapolated r*')}{extrapolated:.8f}")
    else:
        say(f"{_label('discretisation error of r*')}unknown: a solve failed")

    # The wealth distribution.
    stats = _distribution_statistics(eq)
    _say_statistics(stats, labels, a_min, results)

    # The check.
    passed = solved and clearing < CLEARING_TOLERANCE
    results.put(
        "check",
        {
            "passed": passed,
            "solver_successful": solved,
            "market_clearing_tolerance": CLEARING_TOLERANCE,
        },
    )
    market = "capital" if is_aiyagari else "bond"
    if passed:
        say(
            f"check: PASS: the {market} market clears, |S(r*)| = {clearing:.1e} < "
            f"{_sci(CLEARING_TOLERANCE)}, and the household and root-finding solves "
            "converged"
        )
    else:
        why = RESULTS[eq.result] if not solved else f"|S(r*)| = {clearing:.1e}"
        say(
            f"check: FAIL: the {market} market does not clear to "
            f"{_sci(CLEARING_TOLERANCE)} ({why})"
        )
    warn = not error <= GRID_TOLERANCE
    results.put("grid_refinement.warning", warn)
    if warn and math.isfinite(error):
        needed = results.put(
            "grid_refinement.grid_size_for_tolerance",
            _round_up(n * (error / GRID_TOLERANCE) ** (1 / SCHEME_ORDER)),
        )
        say(
            f"warning: r* on this {n}-point grid is about {error:.1e} from its "
            f"grid-converged value, more than {_sci(GRID_TOLERANCE)}, and the "
            "statistics above are those of the same discrete economy. The scheme "
            f"being first order, about {needed} points would bring the error under "
            f"{_sci(GRID_TOLERANCE)} (--grid-size {needed}); the extrapolated r* "
            "removes the first-order part of it."
        )
    elif warn:
        say("warning: r*'s discretisation error could not be estimated.")

    _write_plots(args, status, results, lambda out: _plot_equilibrium(economy, eq, out))
    return 0 if passed else 1


def _say_statistics(stats, labels: list[str], a_min: float, results: _Results):
    say = results.say
    put = results.put
    say("wealth distribution (stationary; statistics of the discrete distribution)")
    at_limit = put("distribution.fraction_at_limit", float(stats.fraction_at_limit))
    by_state = put(
        "distribution.fraction_at_limit_by_state",
        [float(x) for x in stats.fraction_at_limit_by_state],
    )
    say(
        f"{_label('at the borrowing limit')}{at_limit:.1%} of households ("
        f"{_by_state(labels, by_state, '.1%')})"
    )
    percentiles = {f"p{p}": float(v) for p, v in stats.percentiles.items()}
    put("distribution.wealth_percentiles", percentiles)
    say(
        f"{_label('wealth percentiles')}"
        + ", ".join(f"{k} {v:.4g}" for k, v in percentiles.items())
    )
    put("distribution.mean_wealth", float(stats.mean_wealth))
    inequality = {
        "gini": float(stats.gini),
        "top_1_percent_share": float(stats.top_1_share),
        "top_10_percent_share": float(stats.top_10_share),
    }
    above = {
        "gini": float(stats.gini_above_limit),
        "top_1_percent_share": float(stats.top_1_share_above_limit),
        "top_10_percent_share": float(stats.top_10_share_above_limit),
    }
    put("distribution.wealth", inequality)
    put("distribution.wealth_above_limit", above)

    def inequality_lines(values, of):
        say(f"{_label(f'Gini of {of}')}{values['gini']:.4f}")
        say(
            f"{_label(f'top 1%, 10% shares of {of}')}"
            f"{values['top_1_percent_share']:.1%}, {values['top_10_percent_share']:.1%}"
        )

    if math.isfinite(inequality["gini"]):
        inequality_lines(inequality, "wealth")
    else:
        say(
            f"{_label('Gini and top shares of wealth')}not defined: mean wealth "
            f"{float(stats.mean_wealth):.1e} is zero up to rounding (below: of "
            "wealth above the borrowing limit)"
        )
    if a_min != 0 and math.isfinite(above["gini"]):
        inequality_lines(above, "a - a_min")
    consumption = put(
        "distribution.consumption_by_state",
        [float(x) for x in stats.consumption_by_state],
    )
    savings = put(
        "distribution.savings_by_state", [float(x) for x in stats.savings_by_state]
    )
    shares = put("distribution.income_shares", [float(x) for x in stats.income_shares])
    say(f"{_label('households by income state')}{_by_state(labels, shares, '.1%')}")
    say(f"{_label('mean consumption')}{_by_state(labels, consumption, '.4g')}")
    say(f"{_label('mean savings da/dt')}{_by_state(labels, savings, '.4g')}")
    mpc = put("distribution.mpc", float(stats.mpc))
    mpcs = put("distribution.mpc_by_state", [float(x) for x in stats.mpc_by_state])
    windfall = put("distribution.windfall", float(stats.windfall))
    say(
        f"{_label('average MPC')}{mpc:.4f} ({_by_state(labels, mpcs, '.4f')}): "
        f"consumption per year per unit of a windfall of {windfall:.4g} (one grid "
        "step), dc/da"
    )


def _say_pinn_model(model, results: _Results) -> None:
    fields = {}
    for f in dataclasses.fields(model):
        value = getattr(model, f.name)
        if isinstance(value, (int, float, str)) or value is None:
            fields[f.name] = value
        else:
            fields[f.name] = np.asarray(value).tolist()
    results.put("parameters", fields)
    text = ", ".join(f"{k}={v}" for k, v in fields.items())
    results.say(f"model: {type(model).__name__}({text})")


def _run_hjb(args, status: _Status, results: _Results) -> int:
    say = results.say
    model, solver = _hjb_problem(args)
    say(f"jaxdeq solve {args.model} (float64, seed {args.seed})")
    _say_pinn_model(model, results)
    results.put(
        "solver", {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}
    )
    with status.phase("training", "training the PINN"):
        sol = _solve_hjb(model, solver, args.seed, status.training)
    report = sol.report
    res = report["residual"]
    results.put("residual", res)
    say(
        "HJB residual (relative) at 1000 evaluation points: mean "
        f"{res['mean_abs']:.2e}, max {res['max_abs']:.2e}"
    )
    results.put("evaluation_points", 1000)
    ok = True
    for name, entry in report.items():
        if not isinstance(entry, dict) or name == "residual":
            continue
        err = float(entry["rel_l2"])
        results.put(f"errors.{name}", {k: float(v) for k, v in entry.items()})
        if name in _TARGETS:
            target = _TARGETS[name]
            met = err <= target
            ok = ok and met
            results.put(f"targets.{name}", target)
            say(
                f"{name:>12}: relative L2 error {err:.2e} against the closed form "
                f"(target {target:.0e}: {'ok' if met else 'MISSED'})"
            )
        else:
            say(f"{name:>12}: relative L2 error {err:.2e} against the closed form")
    results.put("check.passed", ok)
    _write_plots(args, status, results, lambda out: _plot_hjb(sol, out))
    return 0


def _run_brock_mirman(args, status: _Status, results: _Results) -> int:
    say = results.say
    model, solver = _brock_mirman_problem(args)
    say(f"jaxdeq solve brock-mirman (float64, seed {args.seed})")
    _say_pinn_model(model, results)
    with status.phase("training", "training the Deep Equilibrium Net"):
        sol = _solve_brock_mirman(model, solver, args.seed, status.training)
    euler = sol.euler
    results.put("euler_errors", euler.to_dict())
    results.put("targets", {"log10_mean": -5, "log10_max": -4})
    say(
        f"Euler errors on {euler.num} fresh simulated states: mean log10 "
        f"{euler.log10_mean:.2f} (target < -5), max {euler.log10_max:.2f} "
        "(target < -4)"
    )
    errors = sol.closed_form_errors()["s"]
    results.put("capital_errors", errors)
    say(
        "next-period capital against the closed form: relative L2 "
        f"{errors['rel_l2']:.2e}, max relative {errors['max_rel']:.2e}"
    )
    _write_plots(args, status, results, lambda out: _plot_brock_mirman(sol, out))
    return 0


def _say_time(status: _Status, clock: _CompileClock, total: float, results) -> None:
    compiling = clock.seconds()
    results.put(
        "time",
        {
            "seconds": total,
            "compiling": compiling,
            "phases": status.phases,
            "compile_cache_hits": clock.cache_hits,
            "compile_cache_misses": clock.cache_misses,
        },
    )
    phases = ", ".join(
        f"{key} {p['seconds']:.1f} s ({p['compiling']:.1f} s)"
        for key, p in status.phases.items()
    )
    results.say(
        f"time: {total:.1f} s, {compiling:.1f} s of it compiling (JAX's own "
        f"timing: tracing, lowering, XLA); {phases}"
    )


def run_solve(args: argparse.Namespace) -> int:
    """Run `jaxdeq solve` with parsed arguments; returns the exit status (0: the
    check passed)."""
    _refuse_inapplicable(args)
    if args.seed is None:
        args.seed = 0
    if not args.no_plots:
        # Before any compute: the plots come last.
        try:
            require("matplotlib.figure", f"jaxdeq solve {args.model}")
        except ImportError as e:
            raise SystemExit(f"{e} Or pass --no-plots.") from None
    start = time.time()
    jax.config.update("jax_enable_x64", True)
    results = _Results(args.model)
    with (
        _CompileClock() as clock,
        _compile_cache(not args.no_compile_cache) as cache,
        _runtime_errors_as_nan(),
    ):
        status = _Status(clock)
        if args.model in _EQUILIBRIUM_MODELS:
            code = _run_equilibrium(args, status, results)
        elif args.model == "brock-mirman":
            code = _run_brock_mirman(args, status, results)
        else:
            code = _run_hjb(args, status, results)
    _say_time(status, clock, time.time() - start, results)
    results.put("compile_cache", None if cache is None else str(cache))
    if cache is not None:
        results.say(
            f"compile cache: {cache} ({clock.cache_hits} programs loaded, "
            f"{clock.cache_misses} compiled)"
        )
    outdir = _output_dir(args)
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        results.say(f"wrote {results.write(outdir)}")
    return code
