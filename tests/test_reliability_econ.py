"""Reliability of the economic families (issues 1/11 and 2/11): bad economic inputs
are refused at construction with a message in economic terms, a grid too coarse to
resolve the distribution warns, `jaxdeq solve` refuses options that do not apply,
NumPy integers are accepted, and every econ/PINN/DEQN result is a `jaxdeq.RESULTS`."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq
from jaxdeq import econ, pinn
from jaxdeq.cli import main


# --- inputs checked at construction ----------------------------------------------


@pytest.mark.parametrize("productivity", [0.0, -0.1, float("inf"), float("nan")])
def test_aiyagari_refuses_bad_productivity(productivity):
    # Was accepted; solve_equilibrium then raised lineax's "bug upstream of Lineax",
    # even with throw=False.
    with pytest.raises(ValueError, match="productivity must be positive and finite"):
        econ.Aiyagari(productivity=productivity, grid_size=50)


@pytest.mark.parametrize("cls", [econ.Huggett, econ.Aiyagari])
def test_negative_income_states_are_refused(cls):
    # Was "does not change sign... pass a wider bracket".
    with pytest.raises(ValueError, match="income states z = .* must be positive"):
        cls(z=(-0.1, 0.2), grid_size=50)
    with pytest.raises(ValueError, match="non-negative"):
        econ.Household(z=[-0.1, 0.2], generator=econ.poisson_generator([1.0, 1.0]))


@pytest.mark.parametrize("lam", [(0.0, 1.2), (0.0, 0.0), (1.2, float("inf"))])
@pytest.mark.parametrize("cls", [econ.Huggett, econ.Aiyagari])
def test_zero_switching_intensities_are_refused(cls, lam):
    # Was NaN excess supply, then "pass a wider bracket".
    with pytest.raises(ValueError, match="switching intensities lam"):
        cls(lam=lam, grid_size=50)


def test_reducible_generator_is_refused():
    with pytest.raises(ValueError, match="never leaves some income states"):
        econ.Household(z=[0.1, 0.2], generator=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"from state\(s\) \[0\]"):
        econ.Household(z=[0.1, 0.2], generator=[[0.0, 0.0], [1.0, -1.0]])
    # One income state, or an irreducible chain, is fine.
    econ.Household(z=[0.1], generator=[[0.0]], a_min=0.1)
    econ.Household(
        z=[0.1, 0.2, 0.3],
        generator=econ.diffusion_generator(jnp.array([0.1, 0.2, 0.3]), 0.0, 0.1),
    )


def test_borrowing_limit_below_natural_limit_is_refused():
    # Was "does not change sign... pass a wider bracket".
    with pytest.raises(ValueError, match="below the natural borrowing limit") as info:
        econ.Huggett(a_min=-5.0, grid_size=50)
    # The message names both fixes, with numbers.
    assert "Raise a_min above -2" in str(info.value)
    assert "r_bracket" in str(info.value)
    # A bracket whose top keeps income positive at the limit is accepted.
    econ.Huggett(a_min=-5.0, grid_size=50, r_bracket=(0.0, 0.015))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=float("inf")), "rho must be > 0 and finite"),
        (dict(rho=float("nan")), "rho must be > 0 and finite"),
        (dict(gamma=float("inf")), "gamma must be > 0 and finite"),
        (dict(a_max=float("inf")), "must be finite"),
        (dict(r_bracket=(0.0, float("nan"))), "finite"),
        (dict(grid_size=2), "at least 3"),
        (dict(grid_size=50.0), "must be an integer"),
        (dict(grid_size=True), "must be an integer"),
    ],
)
def test_bad_economy_parameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        econ.Huggett(**kwargs)


def test_aiyagari_bad_technology():
    with pytest.raises(ValueError, match="finite delta"):
        econ.Aiyagari(delta=float("inf"), grid_size=50)


# --- NumPy integers where Python ints are accepted --------------------------------


@pytest.mark.unchecked
def test_numpy_integers_are_accepted():
    economy = econ.Huggett(grid_size=np.int64(50))
    assert type(economy.grid_size) is int and economy.grid_size == 50
    assert econ.Aiyagari(grid_size=np.int32(40)).grid_size == 40
    household = econ.Household(
        z=[0.1, 0.2],
        generator=econ.poisson_generator([1.2, 1.2]),
        a_min=-0.15,
        a_max=2.0,
        grid_size=np.int16(20),
    )
    assert type(household.grid_size) is int
    econ.DEQN(width=np.int64(8), depth=np.int32(1), adam_steps=np.int64(10))
    sol = econ.solve_household(
        household, econ.Prices(jnp.asarray(0.03)), max_steps=np.int64(50)
    )
    # One result chain: the household solve returns jaxdeq.RESULTS.
    assert sol.result == jaxdeq.RESULTS.successful
    assert jaxdeq.is_successful(sol.result)
    report = sol.report
    assert isinstance(report, jaxdeq.Report) and report.successful
    assert report.abs_residual == sol.hjb_residual and report.num_steps == sol.steps
    assert report.extra["kfe_residual"] == sol.kfe_residual


# --- a grid too coarse to resolve the distribution --------------------------------


@pytest.mark.slow
def test_coarse_grid_warns_with_an_error_estimate():
    # Was: a 3-point grid reported success with r* 2.6x the 60-point value.
    with pytest.warns(econ.CoarseGridWarning, match="too coarse") as record:
        eq = econ.solve_equilibrium(econ.Huggett(grid_size=3))
    assert eq.result == jaxdeq.RESULTS.successful
    assert eq.report.successful and eq.report.abs_residual < 1e-8
    assert isinstance(eq.report.extra["household"], jaxdeq.Report)
    message = str(record[0].message)
    assert "of its 3 points" in message
    assert "estimates the error of r*" in message
    assert issubclass(econ.CoarseGridWarning, UserWarning)


# --- `jaxdeq solve` refuses options that do not apply -----------------------------


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["huggett", "--seed", "3"], "--seed"),
        (["aiyagari", "--small"], "--small"),
        (["huggett", "--steps", "10"], "--steps"),
        (["brock-mirman", "--steps", "10"], "--steps"),
        (["cake-eating", "--grid-size", "100"], "--grid-size"),
        (["growth", "--rho", "0.04"], "--rho"),
        (["merton", "--dim", "3"], "--dim"),
        (["lqr", "--horizon", "1.0"], "--horizon"),
    ],
)
def test_solve_refuses_flags_that_do_not_apply(argv, flag):
    with pytest.raises(SystemExit, match=f"{flag} is not supported") as info:
        main(["solve", *argv])
    assert "it applies only to" in str(info.value.code)


# --- one result chain for fits ------------------------------------------------------


def _quadratic(params, points):
    del points
    loss = jnp.sum((params - 2.0) ** 2)
    return loss, {"residual": loss}


def _fit(**kwargs):
    return pinn.fit(
        _quadratic,
        jnp.array([0.0]),
        lambda key, params: jnp.zeros(1),
        key=jr.PRNGKey(0),
        log_every=5,
        **kwargs,
    )


def test_fit_reports_a_result_and_its_final_loss():
    # An unreachable target: fit_not_converged, with the final loss and terms.
    out = _fit(adam_steps=10, lbfgs_steps=0, learning_rate=1e-3, target=1e-12)
    assert out.result == jaxdeq.RESULTS.fit_not_converged
    assert not out.successful
    assert out.loss == pytest.approx(float(_quadratic(out.params, None)[0]))
    assert out.terms["residual"] == pytest.approx(out.loss)
    assert out.stop_reason == "max_steps"
    # A reachable target: successful, and training stops once it is met.
    out = _fit(adam_steps=0, lbfgs_steps=50, target=1e-10)
    assert out.result == jaxdeq.RESULTS.successful
    assert out.loss <= 1e-10 and out.stop_reason == "target"
    report = out.report
    assert isinstance(report, jaxdeq.Report) and report.successful
    assert report.extra["loss"] == out.loss and report.num_steps == out.num_steps
    assert out.num_steps < 50
    # gtol as the target.
    out = _fit(adam_steps=5, lbfgs_steps=0, gtol=1e-12)
    assert out.result == jaxdeq.RESULTS.fit_not_converged
    # No target: the budget ran and the loss is finite.
    out = _fit(adam_steps=5, lbfgs_steps=0)
    assert out.result == jaxdeq.RESULTS.successful
    # The old string, as a deprecated property.
    with pytest.warns(DeprecationWarning, match="message"):
        assert out.message == out.stop_reason


@pytest.mark.parametrize("kwargs", [dict(target=-1.0), dict(gtol=float("nan"))])
def test_fit_refuses_bad_targets(kwargs):
    with pytest.raises(ValueError, match="finite"):
        _fit(adam_steps=5, lbfgs_steps=0, **kwargs)


def test_deqn_target_is_checked():
    with pytest.raises(ValueError, match="target"):
        econ.DEQN(target=-1.0)
    assert econ.DEQN(target=1e-8).target == 1e-8


def test_econ_results_are_jaxdeq_results():
    for cls in (econ.HouseholdSolution, econ.EquilibriumSolution):
        assert cls.__annotations__["result"] is jaxdeq.RESULTS
    assert econ.EstimationResult.__annotations__["result"] is jaxdeq.RESULTS
    assert econ.DEQNSolution.__annotations__["result"] is jaxdeq.RESULTS
    assert pinn.FitResult.__annotations__["result"] is jaxdeq.RESULTS


# --- abstract or final: a closed form is a capability, not a raising default -------


def test_closed_form_is_a_marker_class():
    assert not hasattr(econ.AbstractHJBModel, "value_true")
    assert not hasattr(econ.AbstractHJBModel, "policies_true")
    for model in (econ.CakeEating(), econ.Merton(), econ.LQR(dim=2), econ.Growth()):
        assert isinstance(model, econ.AbstractClosedFormHJBModel)
        assert model.has_closed_form
    # Growth's closed form holds only at gamma == alpha.
    assert not econ.Growth(gamma=2.0).has_closed_form

    class NoClosedForm(econ.AbstractClosedFormHJBModel):
        def hjb(self):
            raise AssertionError

        def value_network(self, key, width, depth):
            raise AssertionError

        def sample(self, key, num):
            raise AssertionError

        def evaluation_points(self, num):
            raise AssertionError

        def policies(self, value_fn, z):
            raise AssertionError

    # Marking a model as closed-form without giving the closed form is an error.
    with pytest.raises(TypeError, match="abstract"):
        NoClosedForm()
    # The hooks are abstract too: a model states them, none is a silent default.
    hooks = {"shape_violation", "residual_scale", "initial_guess"}
    assert hooks <= econ.AbstractHJBModel.__abstractmethods__
    z = jnp.ones(2, jnp.float32)
    assert econ.no_shape_violation(jnp.sum, z).dtype == jnp.float32
    assert econ.no_shape_violation(jnp.sum, z) == 0
    assert econ.discount_scale(z, {"discount": jnp.asarray(-2.0)}) == 2.0


def test_evaluate_hjb_skips_a_closed_form_that_does_not_hold():
    model = econ.Growth(gamma=2.0)
    lo, hi = model.bounds
    report = econ.evaluate_hjb(model, lambda z: -1.0 / z[0], num=8)
    assert set(report) == {"residual"}
    report = econ.evaluate_hjb(econ.Growth(), econ.Growth().value_true, num=8)
    assert report["value"]["rel_l2"] < 1e-12


@pytest.mark.slow
def test_deqn_solution_reports_result_and_loss():
    solver = econ.DEQN(
        width=4,
        depth=1,
        num_paths=4,
        path_length=2,
        adam_steps=2,
        lbfgs_steps=0,
        log_every=1,
        report_paths=4,
        report_length=2,
        report_burn_in=0,
        target=1e-30,
    )
    sol = econ.solve_deqn(econ.BrockMirman(), solver, key=jr.PRNGKey(0))
    assert sol.result == jaxdeq.RESULTS.fit_not_converged
    assert np.isfinite(sol.loss) and sol.loss == pytest.approx(sol.history["loss"][-1])
    assert set(sol.terms) >= {"loss_euler"}


# --- one format and one exception type for the same misuse --------------------------


def _misuses():
    """(who, call, exception): the same misuse across jaxdeq.econ. A setting out of
    range is a ValueError and a setting of the wrong type a TypeError, everywhere;
    the message starts with the name of what was called."""
    key = jr.PRNGKey(0)
    huggett = econ.Huggett(grid_size=50)
    return [
        ("PINN", lambda: econ.PINN(width=0), ValueError),
        ("PINN", lambda: econ.PINN(width=8.0), TypeError),
        ("DEQN", lambda: econ.DEQN(width=0), ValueError),
        ("DEQN", lambda: econ.DEQN(width=8.0), TypeError),
        ("FiniteDifference", lambda: econ.FiniteDifference(max_steps=0), ValueError),
        ("FiniteDifference", lambda: econ.FiniteDifference(max_steps=8.0), TypeError),
        ("PINNHousehold", lambda: econ.PINNHousehold(width=0), ValueError),
        ("PINNHousehold", lambda: econ.PINNHousehold(width=8.0), TypeError),
        ("Huggett", lambda: econ.Huggett(grid_size=2), ValueError),
        ("Huggett", lambda: econ.Huggett(grid_size=50.0), TypeError),
        ("Aiyagari", lambda: econ.Aiyagari(grid_size=2), ValueError),
        ("Aiyagari", lambda: econ.Aiyagari(grid_size=50.0), TypeError),
        (
            "Household",
            lambda: econ.Household(z=[0.1], generator=[[0.0]], grid_size=2),
            ValueError,
        ),
        ("BrockMirman", lambda: econ.BrockMirman(alpha=1.5), ValueError),
        ("BrockMirman", lambda: econ.BrockMirman(alpha="0.3"), TypeError),
        ("CakeEating", lambda: econ.CakeEating(a_min=5.0), ValueError),
        ("CakeEating", lambda: econ.CakeEating(rho="0.05"), TypeError),
        ("Growth", lambda: econ.Growth(alpha=1.5), ValueError),
        ("Merton", lambda: econ.Merton(gamma=-1.0), ValueError),
        ("LQR", lambda: econ.LQR(dim=0), ValueError),
        ("LQR", lambda: econ.LQR(dim=2.0), TypeError),
        ("gauss_hermite", lambda: econ.gauss_hermite(0), ValueError),
        ("gauss_hermite", lambda: econ.gauss_hermite(3.0), TypeError),
        (
            "solve_hjb",
            lambda: econ.solve_hjb(econ.CakeEating(), "pinn", key=key),
            TypeError,
        ),
        (
            "solve_deqn",
            lambda: econ.solve_deqn(econ.BrockMirman(), "deqn", key=key),
            TypeError,
        ),
        ("solve_equilibrium", lambda: econ.solve_equilibrium(huggett, "fd"), TypeError),
        (
            "solve_equilibrium",
            lambda: econ.solve_equilibrium(huggett, bracket=(0.0, 0.06)),
            ValueError,
        ),
        (
            "estimate",
            lambda: econ.estimate(
                huggett,
                lambda e: e.rho,
                0.05,
                lambda q: q.r[None],
                jnp.array([0.03]),
                max_steps=0,
            ),
            ValueError,
        ),
        (
            "estimate",
            lambda: econ.estimate(
                huggett,
                lambda e: e.rho,
                0.05,
                lambda q: q.r[None],
                jnp.array([0.03]),
                max_steps=5.0,
            ),
            TypeError,
        ),
    ]


@pytest.mark.unchecked
def test_econ_misuse_has_one_format_and_one_type():
    for who, call, error in _misuses():
        with pytest.raises(error) as info:
            call()
        assert type(info.value) is error, (who, info.value)
        message = str(info.value)
        assert message.startswith(f"{who}: "), message
        # What to do about it: a value to pass, or what to change.
        assert len(message.split(". ")) >= 2, message
