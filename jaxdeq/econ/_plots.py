"""Figures of economic solutions, as PNG files: stationary equilibria of
heterogeneous-agent economies, PINN solutions of HJB equations and Deep Equilibrium
Net solutions of Brock–Mirman. They need matplotlib (`pip install
"jaxdeq[plots]"`) and draw without pyplot, so no backend is chosen or changed for
the caller."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._optional import matplotlib_figure
from ._brock_mirman import BrockMirman
from ._deqn import DEQNSolution
from ._equilibrium import AbstractEconomy, EquilibriumSolution, excess_supply_curve
from ._hjb import AbstractClosedFormHJBModel, has_closed_form, HJBSolution


_DPI = 120


def _save(fig, outdir: pathlib.Path, name: str, paths: list) -> None:
    paths.append(outdir / name)
    fig.savefig(paths[-1], dpi=_DPI, bbox_inches="tight")


def income_state_labels(economy: AbstractEconomy) -> list[str]:
    """Names of the income states of an economy's households, by their meaning:
    "low income (z = 0.1)" and "high income (z = 0.2)" for two states, the income
    level of each state for more, and "income state j" when the households have
    no labour endowment `z`."""
    household = economy.household()
    z = getattr(household, "z", None)
    if z is None:
        return [f"income state {j + 1}" for j in range(household.num_states)]
    z = np.asarray(z)
    if z.shape == (2,) and z[0] != z[1]:
        low = int(np.argmin(z))
        names = ["", ""]
        names[low] = f"low income (z = {z[low]:.3g})"
        names[1 - low] = f"high income (z = {z[1 - low]:.3g})"
        return names
    return [f"income z = {value:.3g}" for value in z]


def rates_around(
    economy: AbstractEconomy, r: float, num: int = 41
) -> Float[np.ndarray, " num"]:
    """`num` interest rates centred on the equilibrium rate `r`, reaching half way
    to the nearer end of the economy's bracket (whose top is kept below rho, where
    savings diverge): the window in which the market-clearing curve crosses zero
    and stays readable."""
    lo, hi = (float(x) for x in economy.bracket())
    rho = float(economy.household().rho)
    hi = min(hi, rho - 1e-3 * abs(rho))
    half = 0.5 * min(r - lo, hi - r)
    if not half > 0:
        return np.linspace(lo, hi, num)
    return np.linspace(r - half, r + half, num)


def plot_equilibrium(
    economy: AbstractEconomy,
    solution: EquilibriumSolution,
    outdir,
    rates: Float[ArrayLike, " K"] | None = None,
) -> list[pathlib.Path]:
    r"""Write the figures of a stationary equilibrium as PNGs into `outdir` (created
    if missing).

    - `policies.png`: consumption and savings against wealth, one line per income
        state, labelled by its income.
    - `density.png`: the wealth density of each income state above the borrowing
        limit, and the point mass at the limit drawn apart as a bar on its own
        axis (a share of all households), with its size written on it.
    - `excess_supply.png`: the market-clearing condition $S(r)$ on `rates`
        (default: 41 rates around $r^*$, half way to the nearer end of the
        bracket, so the crossing shows), with $r^*$ marked.
    - `capital_market.png`, for an economy with a `capital_demand(r)` method (the
        Aiyagari economy): the capital households supply ($S(r)$ plus the firm's
        demand) and the capital the firm demands, against $r$, crossing at the
        equilibrium.

    Needs matplotlib (`pip install "jaxdeq[plots]"`).

    **Arguments:**

    - `economy`: the [`jaxdeq.econ.AbstractEconomy`][] solved.
    - `solution`: its [`jaxdeq.econ.EquilibriumSolution`][].
    - `outdir`: the directory to write to.
    - `rates`: the interest rates at which to draw $S(r)$.

    **Returns:**

    The paths written.
    """
    figure = matplotlib_figure("plot_equilibrium")
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    h = solution.household
    a = np.asarray(h.grid)
    c, s, g = np.asarray(h.c), np.asarray(h.s), np.asarray(h.density)
    r_star = float(solution.r)
    labels = income_state_labels(economy)
    name = type(economy).__name__
    paths = []

    fig = figure(figsize=(9.5, 3.8), layout="constrained")
    ax_c, ax_s = fig.subplots(1, 2)
    for j, label in enumerate(labels):
        ax_c.plot(a, c[:, j], label=label)
        ax_s.plot(a, s[:, j], label=label)
    ax_s.axhline(0.0, color="k", lw=0.5)
    ax_c.set(xlabel="wealth a", ylabel="consumption c(a)", title="consumption")
    ax_s.set(xlabel="wealth a", ylabel="savings s(a) = da/dt", title="savings")
    ax_c.legend()
    fig.suptitle(f"{name}: policies at r* = {r_star:.6f}")
    _save(fig, outdir, "policies.png", paths)

    # The density above the limit as lines; the limit's point mass (the first grid
    # point's mass, g_0 * da) as a stacked bar on a second axis, since drawn as
    # density it would be a spike of height mass / da.
    fig = figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    mass = g[0] * float(h.step)
    cdf = np.cumsum(np.asarray(h.wealth_distribution))
    top = a[min(int(np.searchsorted(cdf, 1 - 1e-4 * cdf[-1])) + 1, len(a) - 1)]
    width = 0.025 * (top - a[0])
    ax_mass = ax.twinx()
    bottom = 0.0
    for j, label in enumerate(labels):
        (line,) = ax.plot(a[1:], g[1:, j], label=f"{label}: density")
        ax_mass.bar(
            a[0],
            mass[j],
            width=width,
            bottom=bottom,
            align="edge",
            color=line.get_color(),
            alpha=0.45,
            edgecolor="k",
            lw=0.5,
        )
        bottom += mass[j]
    parts = "\n".join(
        f"{label.split(' (')[0]}: {m:.1%}" for label, m in zip(labels, mass)
    )
    ax_mass.annotate(
        f"point mass at the borrowing\nlimit a = {a[0]:g} (bars, right\naxis): "
        f"{bottom:.1%} of households\n{parts}",
        xy=(a[0] + width, bottom),
        xytext=(0.6, 0.4),
        textcoords="axes fraction",
        arrowprops=dict(arrowstyle="->"),
    )
    ax_mass.set_ylim(0, 1.6 * bottom if bottom > 0 else 1.0)
    ax_mass.set_ylabel("point mass at the limit (share of households)")
    ax.set(
        xlabel="wealth a",
        ylabel="density g(a) above the limit",
        xlim=(a[0], top),
        title=f"{name}: stationary wealth distribution",
    )
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    _save(fig, outdir, "density.png", paths)

    rates = rates_around(economy, r_star) if rates is None else np.asarray(rates)
    excess = np.asarray(excess_supply_curve(economy, jnp.asarray(rates)))
    fig = figure(figsize=(5.8, 4.2))
    ax = fig.subplots()
    ax.plot(rates, excess, ".-", label="S(r)")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.axvline(r_star, color="C3", ls="--", label=f"r* = {r_star:.6f}")
    capital_demand = getattr(economy, "capital_demand", None)
    market = "∫a dG − K(r)" if callable(capital_demand) else "∫a dG (bonds)"
    ax.set(
        xlabel="interest rate r",
        ylabel=f"excess supply S(r) = {market}",
        title=f"{name}: market clearing, S(r*) = 0",
    )
    ax.legend()
    _save(fig, outdir, "excess_supply.png", paths)

    if callable(capital_demand):
        demand = np.asarray(jax.vmap(capital_demand)(jnp.asarray(rates)))
        supply = excess + demand
        k_star = float(np.asarray(capital_demand(jnp.asarray(r_star))))
        fig = figure(figsize=(5.8, 4.2))
        ax = fig.subplots()
        ax.plot(supply, rates, ".-", label="supplied by households, ∫a dG")
        ax.plot(demand, rates, "-", label="demanded by firms, K(r)")
        ax.plot([k_star], [r_star], "ko")
        ax.annotate(
            f"K* = {k_star:.4g}, r* = {r_star:.5f}",
            xy=(k_star, r_star),
            xytext=(8, -14),
            textcoords="offset points",
        )
        ax.set(
            xlabel="capital K",
            ylabel="interest rate r",
            title=f"{name}: capital market",
        )
        ax.legend(loc="lower right")
        _save(fig, outdir, "capital_market.png", paths)
    return paths


def plot_hjb(solution: HJBSolution, outdir) -> list[pathlib.Path]:
    """Write the figures of an HJB solve as PNGs into `outdir` (created if
    missing): `value.png` (the value function and, when known, the closed form),
    `policies.png` (each policy against the closed form), `errors.png` (relative
    errors of value and policies, log scale) and `loss.png` (the loss per term
    over training). Models with more than one state variable are drawn along a
    line through their evaluation box: for a time-dependent model, wealth at the
    first time; for the LQR, the segment from $-x$ to $x$ along a fixed random
    direction. Needs matplotlib (`pip install "jaxdeq[plots]"`).

    **Returns:**

    The paths written.
    """
    figure = matplotlib_figure("plot_hjb")
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model, value = solution.model, solution.value
    z = np.asarray(model.evaluation_points(400))
    if z.shape[1] == 1:
        grid, axis, label = z, z[:, 0], "state"
    elif getattr(model, "horizon", None) is not None:
        first = z[:, 0] == z[0, 0]
        grid, axis, label = z[first], z[first][:, 1], "wealth W at t = 0"
    else:
        direction = np.random.default_rng(0).standard_normal(z.shape[1])
        direction *= np.max(np.abs(z)) / np.max(np.abs(direction))
        s = np.linspace(-1, 1, 201)
        grid, axis, label = s[:, None] * direction, s, "position along a line"
    grid = jnp.asarray(grid)
    v = np.asarray(jax.vmap(value)(grid))
    pols = {k: np.asarray(p) for k, p in solution.policies(grid).items()}
    if has_closed_form(model):
        assert isinstance(model, AbstractClosedFormHJBModel)
        v_true = np.asarray(jax.vmap(model.value_true)(grid))
        p_true = {
            k: np.asarray(p) for k, p in jax.vmap(model.policies_true)(grid).items()
        }
    else:
        v_true, p_true = None, {}
    paths = []

    fig = figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(axis, v, label="PINN")
    if v_true is not None:
        ax.plot(axis, v_true, "k--", label="closed form")
    ax.set(xlabel=label, ylabel="V", title=f"{type(model).__name__}: value")
    ax.legend()
    _save(fig, outdir, "value.png", paths)

    fig = figure(figsize=(5 * len(pols), 4))
    axes = np.atleast_1d(fig.subplots(1, len(pols)))
    for ax, (name, p) in zip(axes, pols.items()):
        p2 = p.reshape(len(axis), -1)
        for j in range(min(p2.shape[1], 3)):
            ax.plot(axis, p2[:, j], label=f"PINN[{j}]" if p2.shape[1] > 1 else "PINN")
            if name in p_true:
                ax.plot(axis, p_true[name].reshape(len(axis), -1)[:, j], "k--")
        ax.set(xlabel=label, title=f"{name} (dashed: closed form)")
        ax.legend()
    _save(fig, outdir, "policies.png", paths)

    if v_true is not None:
        fig = figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.semilogy(axis, np.abs(v - v_true) / np.abs(v_true), label="value")
        for name, p in pols.items():
            t = p_true[name]
            err = np.abs(p - t).reshape(len(axis), -1).max(axis=1)
            ax.semilogy(
                axis, err / np.abs(t).reshape(len(axis), -1).max(axis=1), label=name
            )
        ax.set(xlabel=label, ylabel="relative error", title="errors")
        ax.legend()
        _save(fig, outdir, "errors.png", paths)

    history = solution.fit.history
    fig = figure(figsize=(5, 4))
    ax = fig.subplots()
    for name in ("loss", "hjb", "shape"):
        if name in history and np.any(history[name] > 0):
            ax.semilogy(history["step"], history[name], label=name)
    switch = history["step"][history["phase"] == 0]
    if switch.size:
        ax.axvline(switch[-1], color="grey", ls=":", label="Adam → L-BFGS")
    ax.set(xlabel="step", title="training loss")
    ax.legend()
    _save(fig, outdir, "loss.png", paths)
    return paths


def plot_brock_mirman(
    solution: DEQNSolution, outdir: str | pathlib.Path
) -> list[pathlib.Path]:
    """Write the figures of a Brock–Mirman solve as PNGs: `brock_mirman_policy.png`
    (next period's capital and the savings share against the closed form, over
    capital at three productivity levels) and `brock_mirman_euler_errors.png` (the
    histogram of $\\log_{10}|e|$ on the fresh simulated states). Needs matplotlib
    (`pip install "jaxdeq[plots]"`).

    **Arguments:**

    - `solution`: a [`jaxdeq.econ.solve_deqn`][] solution of a
        [`jaxdeq.econ.BrockMirman`][] model.
    - `outdir`: the directory to write to (created if missing).

    **Returns:**

    The paths written.
    """
    figure = matplotlib_figure("plot_brock_mirman")
    model = solution.policy.model
    if not isinstance(model, BrockMirman):
        raise TypeError(
            "plot_brock_mirman: `solution` must be a solve_deqn solution of a "
            f"BrockMirman model, got one of {type(model).__name__}."
        )
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    states = solution.states.reshape(-1, 2)
    k_low, k_high = np.quantile(states[:, 0], [0.005, 0.995])
    z_levels = np.quantile(states[:, 1], [0.05, 0.5, 0.95])
    capital = np.linspace(k_low, k_high, 200)
    paths = []

    fig = figure(figsize=(10, 4))
    ax_k, ax_s = fig.subplots(1, 2)
    for z in z_levels:
        grid = jnp.asarray(np.stack([capital, np.full_like(capital, z)], axis=-1))
        share = np.asarray(jax.vmap(solution.policy)(grid)[:, 0])
        truth = np.asarray(jax.vmap(model.capital_true)(grid))
        (line,) = ax_k.plot(
            capital, share * z * capital**model.alpha, label=f"z={z:.3f}"
        )
        ax_k.plot(capital, truth, "k:", lw=1)
        ax_s.plot(capital, share, color=line.get_color(), label=f"z={z:.3f}")
    ax_s.axhline(model.alpha * model.beta, color="k", ls=":", lw=1, label="closed form")
    ax_k.set(xlabel="K", ylabel="K'", title="Next-period capital (dotted: closed form)")
    ax_s.set(xlabel="K", ylabel="savings share s", title="Savings share")
    ax_s.ticklabel_format(useOffset=False)
    ax_k.legend()
    ax_s.legend()
    fig.tight_layout()
    _save(fig, outdir, "brock_mirman_policy.png", paths)

    fig = figure(figsize=(5, 3.5))
    ax = fig.subplots()
    log_errors = np.log10(np.maximum(np.abs(solution.errors.ravel()), 1e-300))
    ax.hist(log_errors, bins=50)
    ax.axvline(solution.euler.log10_mean, color="k", ls="--", label="log10 mean |e|")
    ax.set(xlabel=r"$\log_{10}|e|$", ylabel="states", title="Relative Euler errors")
    ax.legend()
    fig.tight_layout()
    _save(fig, outdir, "brock_mirman_euler_errors.png", paths)
    return paths
