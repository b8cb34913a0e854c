"""Training never loses a good state, and a resume is exact or refused.

The reproducers of issue 2/11 (training part), each as a small test. Most use a
three-parameter regression recipe (`TOY`) that compiles in a second; `explode=True`
adds a term whose loss overflows to infinity after a few steps on its own.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq.train as jtrain
from jaxdeq.cli import main


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    explode: bool = False


class _Toy(eqx.Module):
    w: jax.Array


def _toy_data(options):
    del options
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([1.0, 2.0, 3.0], np.float32)).astype(np.float32)
    return {"x": x, "y": y}, {"x": x[:8], "y": y[:8]}


def _toy_loss(model, batch, key, options=ToyOptions()):
    noise = 0.01 * jr.normal(key, (), jnp.float32)
    value = jnp.mean((batch["x"] @ model.w + noise - batch["y"]) ** 2)
    return value, {"w_sum": jnp.sum(model.w)}


def _exploding_loss(model, batch, key):
    value, metrics = _toy_loss(model, batch, key)
    # Adam moves sum(w) up by about 3 * learning rate per step; exp(exp(s))
    # overflows float32 once s > 4.5.
    return value - jnp.exp(jnp.exp(jnp.sum(model.w))), metrics


def _toy_recipe(explode=False):
    return jtrain.Recipe(
        name="toy-explode" if explode else "toy",
        description="three-parameter regression",
        options=ToyOptions,
        init=lambda key, options: _Toy(jr.normal(key, (3,), jnp.float32)),
        data=_toy_data,
        loss=_exploding_loss if explode else _toy_loss,
        evaluate=lambda model, data: {"mse": _toy_loss(model, data, jr.PRNGKey(0))[0]},
    )


TOY = _toy_recipe()
EXPLODING = _toy_recipe(explode=True)
BASE = dict(
    batch_size=16,
    log_every=1,
    eval_every=5,
    checkpoint_every=5,
    learning_rate=0.1,
    progress=False,
)


@pytest.fixture(autouse=True)
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _train(run_dir, steps, recipe=TOY, **kwargs):
    config = jtrain.TrainConfig(steps=steps, run_dir=str(run_dir), **{**BASE, **kwargs})
    messages = []
    result = jtrain.train(recipe, config, ToyOptions(), log=messages.append)
    return result, messages


def _steps(run_dir):
    return sorted(
        int(p.name)
        for p in (pathlib.Path(run_dir) / "checkpoints").iterdir()
        if p.name.isdigit()
    )


def _lines(path):
    text = pathlib.Path(path).read_text()

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return [json.loads(x, parse_constant=refuse) for x in text.splitlines() if x]


def _damage(run_dir, step):
    directory = pathlib.Path(run_dir) / "checkpoints" / str(step)
    files = [f for f in directory.rglob("*") if f.is_file() and "state" in f.parts]
    victim = max(files, key=lambda f: f.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


#
# Non-finite steps
#


def test_diverging_run_keeps_last_finite_checkpoint_and_exits_non_zero(
    tmp_path, monkeypatch, capsys
):
    # Checkpoints every step, keep=3: before the fix, the non-finite states were
    # written and pushed out every finite one, and the command exited 0.
    monkeypatch.setitem(jtrain.RECIPES, EXPLODING.name, EXPLODING)
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            EXPLODING.name,
            "--steps",
            "60",
            "--batch-size",
            "16",
            "--checkpoint-every",
            "1",
            "--keep",
            "3",
            "--learning-rate",
            "0.2",
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "is not finite" in err and "is intact" in err
    steps = _steps(run_dir)
    assert len(steps) == 3 and steps[-1] < 60
    for step in steps:
        record = json.loads(
            (run_dir / "checkpoints" / str(step) / "record" / "metadata").read_text()
        )
        assert record["step"] == step
    # The failing step's metrics are strict JSON: null plus a flag.
    last = _lines(run_dir / "metrics.jsonl")[-1]
    assert last["step"] == steps[-1] + 1
    flagged = last["nonfinite"]
    assert "grad_norm" in flagged and all(last[k] is None for k in flagged)
    reloaded = jtrain.load_history(run_dir)[-1]
    assert all(not np.isfinite(reloaded[k]) for k in flagged)
    # The newest checkpoint restores, and it is finite.
    result, messages = _train(
        run_dir, steps[-1], recipe=EXPLODING, resume=True, keep=3, learning_rate=0.2
    )
    assert result.resumed_from == steps[-1]
    assert not any("damaged" in m for m in messages)
    assert np.all(np.isfinite(np.asarray(result.model.w)))


def test_in_process_stop_policy_raises(tmp_path):
    with pytest.raises(FloatingPointError, match="not finite"):
        _train(tmp_path, 60, recipe=EXPLODING, learning_rate=0.5)


@pytest.mark.parametrize("policy", ["skip", "reduce"])
def test_skip_and_reduce_policies(tmp_path, policy):
    # A non-finite step is not applied; "reduce" also halves the learning rate.
    try:
        result, messages = _train(
            tmp_path, 40, recipe=EXPLODING, learning_rate=0.5, nonfinite=policy
        )
    except FloatingPointError as e:
        # Here the gradient at the parameters reached is infinite: no step size
        # gets past it, and both policies give up.
        assert "10 non-finite steps in a row" in str(e)
        history = jtrain.load_history(tmp_path)
    else:
        assert result.skipped >= 1
        assert any("update skipped" in m for m in messages)
        history = result.history
    assert max(r["skipped"] for r in history) >= 1
    if policy == "reduce":
        assert min(r["lr_scale"] for r in history) < 1
    _lines(tmp_path / "metrics.jsonl")  # strict JSON
    # Every checkpoint is finite: the newest one restores.
    resumed, messages = _train(
        tmp_path,
        _steps(tmp_path)[-1],
        recipe=EXPLODING,
        learning_rate=0.5,
        nonfinite=policy,
        resume=True,
    )
    assert not any("damaged" in m for m in messages)


def test_non_finite_state_is_never_checkpointed(tmp_path):
    from jaxdeq.train._checkpoint import Checkpoints

    checkpoints = Checkpoints(tmp_path, 2, {"recipe": "x"})
    good = {"a": np.ones(3, np.float32), "n": np.zeros((), np.int64)}
    bad = {"a": np.array([1.0, np.nan, 1.0], np.float32), "n": np.zeros((), np.int64)}
    assert checkpoints.save(1, good, {})
    assert not checkpoints.save(2, bad, {})
    assert not checkpoints.save(3, {**bad, "a": bad["a"] * np.inf}, {})
    assert checkpoints.steps() == [1]
    checkpoints.close()


#
# Validation before compute
#


def _bad_values(field):
    if field.type in (bool, "bool"):
        return ["yes"]
    if isinstance(field.default, str):
        return ["no-such-choice"]
    if isinstance(field.default, float):
        return [float("nan"), float("inf"), -1.0]
    if isinstance(field.default, int) or field.name == "devices":
        return [-5, 1.5]
    return []


@pytest.mark.parametrize(
    "cls",
    [jtrain.TrainConfig] + [r.options for r in jtrain.RECIPES.values()],
    ids=lambda c: c.__name__,
)
@pytest.mark.unchecked
def test_every_option_is_validated(cls):
    for field in dataclasses.fields(cls):
        for value in _bad_values(field):
            if field.name == "run_dir":
                value = ""
            with pytest.raises((TypeError, ValueError), match=field.name):
                cls(**{field.name: value})
    cls()  # the defaults are valid
    assert jtrain.DEQDigitsOptions(hidden=np.int64(8)).hidden == 8


@pytest.mark.parametrize(
    "flags",
    [
        ["--hidden", "0"],
        ["--hidden", "-5"],
        ["--learning-rate", "nan"],
        ["--learning-rate", "-1"],
        ["--learning-rate", "inf"],
        ["--nonfinite", "ignore"],
    ],
)
def test_cli_refuses_bad_values_before_compute(tmp_path, capsys, flags):
    start = time.perf_counter()
    try:
        code = main(["train", "deq-digits", "--run-dir", str(tmp_path), *flags])
    except SystemExit as e:  # argparse's refusal of a choice
        code = e.code
    assert code == 2
    assert flags[0].lstrip("-").split("-")[0] in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()
    assert time.perf_counter() - start < 30


#
# Resume: exact, or refused naming what differs
#


def test_resume_restores_key_and_data_position_exactly(tmp_path):
    straight, _ = _train(tmp_path / "a", 10)
    _train(tmp_path / "b", 5)
    resumed, _ = _train(tmp_path / "b", 10, resume=True)
    assert resumed.resumed_from == 5
    np.testing.assert_array_equal(np.asarray(resumed.model.w), straight.model.w)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(seed=1), "seed"),
        (dict(batch_size=32), "batch_size"),
        (dict(learning_rate=0.05), "learning_rate"),
        (dict(accumulate=2), "accumulate"),
        (dict(precision="bfloat16"), "precision"),
    ],
)
def test_resume_with_another_configuration_is_refused(tmp_path, change, field):
    _train(tmp_path, 5)
    with pytest.raises(ValueError, match=f"{field}: .* -> .*--force"):
        _train(tmp_path, 10, resume=True, **change)


def test_resume_in_another_numerical_environment_is_refused(tmp_path):
    # The test session runs in 64-bit mode; a checkpoint written without it is
    # not resumed bit-exactly with it (intermediate dtypes differ), so refused.
    with jax.enable_x64(False):
        _train(tmp_path, 5)
    with pytest.raises(ValueError, match="x64: False -> True.*--force"):
        _train(tmp_path, 10, resume=True)
    resumed, messages = _train(tmp_path, 10, resume=True, force=True)
    assert resumed.resumed_from == 5
    assert any("forced resume" in m and "x64" in m for m in messages)


def test_forced_resume_is_recorded(tmp_path):
    _train(tmp_path, 5)
    result, messages = _train(tmp_path, 10, resume=True, seed=3, force=True)
    assert result.resumed_from == 5 and result.step == 10
    assert any("forced resume" in m and "seed" in m for m in messages)
    events = _lines(tmp_path / "run.jsonl")
    assert [e["event"] for e in events] == ["start", "resume"]
    assert events[-1]["forced_changes"] == {"seed": [0, 3]}
    # Later resumes compare with the new configuration.
    again, _ = _train(tmp_path, 12, resume=True, seed=3)
    assert again.resumed_from == 10


def test_recipe_option_change_is_named(tmp_path):
    _train(tmp_path, 5)
    config = jtrain.TrainConfig(steps=10, run_dir=str(tmp_path), resume=True, **BASE)
    with pytest.raises(ValueError, match="explode: False -> True"):
        jtrain.train(TOY, config, ToyOptions(explode=True), log=lambda m: None)


#
# Metrics: no duplicates, never deleted, strict JSON
#


def test_metrics_after_a_kill_have_no_duplicates(tmp_path):
    # As after kill -9 at step 20 with the newest checkpoint at 10: metric lines
    # up to 20, checkpoint 20 gone.
    _train(tmp_path, 20, checkpoint_every=10)
    shutil.rmtree(tmp_path / "checkpoints" / "20")
    resumed, messages = _train(tmp_path, 30, resume=True, checkpoint_every=10)
    assert resumed.resumed_from == 10
    steps = [r["step"] for r in _lines(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, 31))
    superseded = _lines(tmp_path / "metrics.superseded.jsonl")
    assert [r["step"] for r in superseded] == list(range(11, 21))


def test_resume_with_every_checkpoint_damaged_keeps_old_metrics(tmp_path):
    _train(tmp_path, 10)
    before = (tmp_path / "metrics.jsonl").read_text()
    for step in _steps(tmp_path):
        _damage(tmp_path, step)
    result, messages = _train(tmp_path, 3, resume=True)
    assert result.resumed_from is None
    assert (tmp_path / "metrics.previous.jsonl").read_text() == before
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_repeated_damage_of_one_step_never_collides(tmp_path):
    _train(tmp_path, 10)
    for _ in range(3):
        _damage(tmp_path, 10)
        result, messages = _train(tmp_path, 10, resume=True)
        assert result.resumed_from == 5 and result.step == 10
    damaged = sorted(p.name for p in (tmp_path / "damaged").iterdir())
    assert damaged == ["10", "10.1", "10.2"]


#
# Signals (real processes)
#


_SCRIPT = """
import sys
import jax
jax.config.update("jax_enable_x64", True)  # as the test session (tests/conftest.py)
sys.path.insert(0, {root!r})
import jaxdeq.train as jtrain
from tests.test_reliability_train import TOY
jtrain.RECIPES[TOY.name] = TOY
from jaxdeq.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exit_code_is_128_plus_signal(tmp_path, sig):
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-c",
        _SCRIPT.format(root=root),
        "train",
        TOY.name,
        "--steps",
        "1000000",
        "--batch-size",
        "16",
        "--checkpoint-every",
        "50",
        "--run-dir",
        str(tmp_path),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "50").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, out
    assert "checkpoint saved" in out


def _toy_cli(run_dir, steps, *extra):
    root = str(pathlib.Path(__file__).resolve().parents[1])
    return [
        sys.executable,
        "-c",
        _SCRIPT.format(root=root),
        "train",
        TOY.name,
        "--steps",
        str(steps),
        "--batch-size",
        "16",
        "--learning-rate",
        "0.1",
        "--log-every",
        "1",
        "--eval-every",
        "5",
        "--checkpoint-every",
        "50",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_appends_metrics_without_duplicates(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        _toy_cli(tmp_path, 10**6), env=env, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "100").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # past the checkpoint: metric lines the resume will re-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = max(r["step"] for r in _lines(tmp_path / "metrics.jsonl"))
    total = logged + 20
    resumed, _ = _train(tmp_path, total, resume=True, checkpoint_every=50)
    # Usually the kill lands between checkpoints, so the steps logged after the
    # last one are run again; on a fast machine it may land right after one.
    assert resumed.resumed_from is not None and resumed.resumed_from <= logged
    steps = [r["step"] for r in _lines(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, total + 1))
    superseded = tmp_path / "metrics.superseded.jsonl"
    if resumed.resumed_from < logged:
        rerun = [r["step"] for r in _lines(superseded)]
        assert rerun == list(range(resumed.resumed_from + 1, logged + 1))
    straight, _ = _train(tmp_path / "straight", total, checkpoint_every=50)
    np.testing.assert_array_equal(np.asarray(resumed.model.w), straight.model.w)
