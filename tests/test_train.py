"""jaxdeq.train: sharding, checkpoint and resume (also after SIGKILL), bad input."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeq
import jaxdeq.ep
import jaxdeq.train as jtrain
from jaxdeq.cli import main


SMALL = jtrain.DEQDigitsOptions(hidden=16)
BASE = dict(
    batch_size=64,
    log_every=5,
    eval_every=100,
    checkpoint_every=10,
    learning_rate=3e-3,
    progress=False,
)
CLI = "import sys; from jaxdeq.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(autouse=True)
def standard_promotion():
    # Training runs as a user runs it: optax relies on standard dtype promotion.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _flat(model):
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


def _record(run_dir, step):
    path = pathlib.Path(run_dir) / "checkpoints" / str(step) / "record" / "metadata"
    return json.loads(path.read_text())


def _train(run_dir, steps, **kwargs):
    config = jtrain.TrainConfig(steps=steps, run_dir=str(run_dir), **{**BASE, **kwargs})
    messages = []
    result = jtrain.train(jtrain.DEQ_DIGITS, config, SMALL, log=messages.append)
    return result, messages


@pytest.mark.slow
def test_damaged_checkpoint_is_skipped_and_resume_is_exact(tmp_path):
    straight, _ = _train(tmp_path / "a", 30)
    _train(tmp_path / "b", 20)
    step20 = tmp_path / "b" / "checkpoints" / "20"
    files = [f for f in step20.rglob("*") if f.is_file() and "state" in f.parts]
    victim = max(files, key=lambda f: f.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    resumed, messages = _train(tmp_path / "b", 30, resume=True)
    assert resumed.resumed_from == 10
    assert any("damaged" in m for m in messages)
    assert (tmp_path / "b" / "damaged" / "20").exists()  # kept, not deleted
    np.testing.assert_array_equal(_flat(resumed.model), _flat(straight.model))
    history = jtrain.load_history(tmp_path / "b")
    assert [r["step"] for r in history][-1] == 30
    assert jtrain.plot_history(history, tmp_path / "p.png").stat().st_size > 0


@pytest.mark.slow
def test_bad_input_fails_before_compute(tmp_path):
    with pytest.raises(ValueError, match="does not divide"):
        _train(tmp_path / "c", 5, accumulate=3)
    with pytest.raises(ValueError, match="devices requested"):
        _train(tmp_path / "c", 5, devices=jax.device_count() + 1)
    with pytest.raises(ValueError, match="model_parallel=2 does not divide"):
        _train(tmp_path / "c", 5, devices=1, model_parallel=2)
    _train(tmp_path / "d", 10)
    with pytest.raises(ValueError, match="--resume"):
        _train(tmp_path / "d", 10)
    other = dataclasses.replace(SMALL, hidden=8)
    config = jtrain.TrainConfig(
        steps=10, run_dir=str(tmp_path / "d"), resume=True, **BASE
    )
    with pytest.raises(ValueError, match="another"):
        jtrain.train(jtrain.DEQ_DIGITS, config, other)
    with pytest.raises(SystemExit) as e:
        main(["train", "no-such-recipe"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["train", "deq-digits", "--no-such-option", "1"])


def test_help_names_every_recipe_and_its_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, recipe in jtrain.RECIPES.items():
        assert name in text and " ".join(recipe.description.split()) in text
        with pytest.raises(SystemExit) as e:
            main(["train", name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        for field in dataclasses.fields(recipe.options):
            assert "--" + field.name.replace("_", "-") in out


def _cli(run_dir, *extra):
    return [
        sys.executable,
        "-c",
        CLI,
        "train",
        "deq-digits",
        "--hidden",
        "16",
        "--steps",
        "30",
        "--checkpoint-every",
        "5",
        "--log-every",
        "5",
        "--learning-rate",
        "0.003",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run(_cli(tmp_path / "a"), check=True, env=env, capture_output=True)
    victim = subprocess.Popen(_cli(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoints" / "10").exists():
        assert time.time() < deadline and victim.poll() is None
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = subprocess.run(
        _cli(tmp_path / "b", "--resume"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from step" in done.stdout
    assert (
        _record(tmp_path / "b", 30)["checksum"]
        == _record(tmp_path / "a", 30)["checksum"]
    )


_DEVICES_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax, jax.numpy as jnp, equinox as eqx
    import jaxdeq.data, jaxdeq.train as jtrain

    assert jax.device_count() == 4
    config = jtrain.TrainConfig(steps=3, batch_size=64, log_every=1, progress=False,
                                run_dir=tempfile.mkdtemp())
    result = jtrain.train(jtrain.DEQ_DIGITS, config, jtrain.DEQDigitsOptions(hidden=16),
                          log=lambda s: None)
    losses = [r["loss"] for r in result.history]

    # A 2 x 2 mesh: batch split two ways, arrays of >= 256 elements split along
    # the second ("model") axis.
    config = jtrain.TrainConfig(steps=3, batch_size=64, log_every=1, progress=False,
                                run_dir=tempfile.mkdtemp(), model_parallel=2,
                                shard_threshold=256)
    result = jtrain.train(jtrain.DEQ_DIGITS, config, jtrain.DEQDigitsOptions(hidden=16),
                          log=lambda s: None)
    model_losses = [r["loss"] for r in result.history]
    leaves = jax.tree.leaves(eqx.filter(result.model, eqx.is_inexact_array))
    split = [x.shape for x in leaves if "model" in tuple(x.sharding.spec)]
    whole = [x.shape for x in leaves if "model" not in tuple(x.sharding.spec)]

    # A pmap-ed DEQ training step on 2 devices, the legacy API.
    model = jtrain.DEQ_DIGITS.init(jax.random.PRNGKey(0),
                                   jtrain.DEQDigitsOptions(hidden=16))
    x, y, _, _ = jaxdeq.data.load_digits()
    def loss(m, xb, yb):
        logits, _ = jax.vmap(m)(xb)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(yb.shape[0]), yb])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    def step(p, xb, yb):
        g = jax.grad(lambda q: loss(eqx.combine(q, static), xb, yb))(p)
        g = jax.lax.pmean(g, "devices")
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
    replicated = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    out = jax.pmap(step, axis_name="devices", devices=jax.devices()[:2])(
        replicated, x[:32].reshape(2, 16, 64), y[:32].reshape(2, 16))
    single = jax.tree.map(
        lambda a, b: a - 0.1 * b, params,
        jax.grad(lambda q: loss(eqx.combine(q, static), x[:32], y[:32]))(params))
    diff = max(float(jnp.max(jnp.abs(a[0] - b))) for a, b in
               zip(jax.tree.leaves(out), jax.tree.leaves(single)))
    print(json.dumps({"losses": losses, "pmap_diff": diff, "model_losses": model_losses,
                      "split": split, "whole": whole}))
    """
)


@pytest.mark.slow
def test_four_devices_match_one_and_pmap_step_runs(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    env.pop("JAX_ENABLE_X64", None)
    out = subprocess.run(
        [sys.executable, "-c", _DEVICES_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sharded = json.loads(out.stdout.strip().splitlines()[-1])
    single, _ = _train(tmp_path / "one", 3, log_every=1, learning_rate=1e-3)
    # Same model, data and keys; only the reduction order of the batch mean differs.
    np.testing.assert_allclose(
        sharded["losses"], [r["loss"] for r in single.history], rtol=1e-5
    )
    assert sharded["pmap_diff"] < 1e-5
    # Parameters split along the mesh's "model" axis train like one device.
    np.testing.assert_allclose(
        sharded["model_losses"], [r["loss"] for r in single.history], rtol=1e-5
    )
    assert [16, 16] in sharded["split"] and [16, 64] in sharded["split"]
    assert all(np.prod(shape) < 256 for shape in sharded["whole"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = _cli(tmp_path / "t")
    cmd[cmd.index("30")] = "5000"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not (tmp_path / "t" / "checkpoints" / "5").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out  # 143: the shell's convention
    assert "checkpoint saved" in out and "--resume" in out
    steps = sorted(
        int(p.name)
        for p in (tmp_path / "t" / "checkpoints").iterdir()
        if p.name.isdigit()
    )
    assert steps[-1] < 5000 and _record(tmp_path / "t", steps[-1])["step"] == steps[-1]


@pytest.mark.slow
def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # The recipe's loss is a batch mean, so the mean of two half-batch gradients is
    # the full-batch gradient: the runs agree to float32 rounding.
    full, _ = _train(tmp_path / "full", 3, log_every=1, checkpoint_every=100)
    halves, _ = _train(
        tmp_path / "acc", 3, log_every=1, checkpoint_every=100, accumulate=2
    )
    np.testing.assert_allclose(
        [r["loss"] for r in halves.history],
        [r["loss"] for r in full.history],
        rtol=1e-5,
    )
    np.testing.assert_allclose(_flat(halves.model), _flat(full.model), atol=1e-5)


_DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    pid, port, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid
    )
    import jaxdeq.train as jtrain
    config = jtrain.TrainConfig(steps=4, batch_size=64, log_every=1, eval_every=2,
                                checkpoint_every=2, progress=False, run_dir=run_dir)
    r = jtrain.train(jtrain.DEQ_DIGITS, config, jtrain.DEQDigitsOptions(hidden=16),
                     log=lambda s: None)
    print(json.dumps({"devices": jax.device_count(),
                      "losses": [h["loss"] for h in r.history]}))
    """
)


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _DISTRIBUTED_SCRIPT,
                str(i),
                port,
                str(tmp_path / "d"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(r["devices"] == 2 for r in results)
    assert results[0]["losses"] == results[1]["losses"]
    single, _ = _train(tmp_path / "one", 4, log_every=1, learning_rate=1e-3)
    np.testing.assert_allclose(
        results[0]["losses"], [r["loss"] for r in single.history], rtol=1e-5
    )
    assert (tmp_path / "d" / "checkpoints" / "4").exists()


@pytest.mark.slow
def test_backward_statistics_logged_and_bfloat16_compute(tmp_path):
    full, _ = _train(tmp_path / "f32", 20, log_every=1, tensorboard=True)
    half, _ = _train(tmp_path / "bf16", 20, log_every=1, precision="bfloat16")
    # The implicit backward solve is logged every step: it ran, converged and met
    # its tolerance (a tenth of the recipe's tol, 1e-4).
    # In bfloat16 (tolerance 1e-2) the logged
    # residual is a batch mean of relative residuals measured with bfloat16
    # products, which is large for examples whose cotangent is nearly zero (the
    # well-classified ones): it is only bounded, not small.
    for result, tol in ((full, 1e-4), (half, 1.0)):
        first, last = result.history[0], result.history[-1]
        for record in result.history:
            assert 1 <= record["backward_num_steps"] < 100
            assert record["backward_success"] == 1.0
            assert record["backward_rel_residual"] < tol
            assert record["successful"] == 1.0 and record["num_steps"] < 30
        assert np.isfinite(last["loss"]) and last["loss"] < 0.8 * first["loss"]
        # Parameters and optimiser state stay float32 whatever the compute dtype.
        dtypes = {
            x.dtype
            for x in jax.tree.leaves(eqx.filter(result.model, eqx.is_inexact_array))
        }
        assert dtypes == {np.dtype("float32")}
    # bfloat16 loosens the relative tolerance only: the backward solve of a mean
    # loss (a small cotangent) still iterates, not stops at once on an absolute
    # tolerance that its small vectors meet from the start.
    half_backward = [r["backward_num_steps"] for r in half.history]
    assert np.mean(half_backward) >= 2, half_backward
    # bfloat16 has 8 bits of mantissa: the first loss agrees to about 1 %.
    np.testing.assert_allclose(
        half.history[0]["loss"], full.history[0]["loss"], rtol=2e-2
    )
    assert half.history[-1]["loss"] < 1.2 * full.history[-1]["loss"]
    lines = (tmp_path / "f32" / "metrics.jsonl").read_text().splitlines()
    assert "backward_rel_residual" in json.loads(lines[-1])
    # The same scalars, under the same names, as TensorBoard events.
    scalars = _tensorboard_scalars(tmp_path / "f32" / "tensorboard")
    for name in ("loss", "backward_rel_residual", "num_steps", "rel_residual"):
        logged = [(r["step"], r[name]) for r in full.history]
        np.testing.assert_allclose(scalars[name], logged, rtol=1e-6)


def _tensorboard_scalars(directory):
    """Read scalar summaries from event files (TFRecord framing of Event protos)."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = np.frombuffer(data[offset : offset + 8], "<u8")
            event = event_pb2.Event.FromString(
                data[offset + 12 : offset + 12 + int(length)]
            )
            offset += 12 + int(length) + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(
                    (event.step, value.simple_value)
                )
    return scalars


@pytest.mark.slow
def test_attractor_recipe_trains_and_evaluates(tmp_path):
    options = jtrain.AttractorSudokuOptions(
        dim=16, train_puzzles=64, augment=2, test_puzzles=16
    )
    config = jtrain.TrainConfig(
        steps=6,
        batch_size=16,
        log_every=3,
        eval_every=6,
        checkpoint_every=6,
        learning_rate=3e-3,
        progress=False,
        run_dir=str(tmp_path),
    )
    result = jtrain.train(jtrain.ATTRACTOR_SUDOKU, config, options, log=lambda m: None)
    last = result.history[-1]
    assert last["loss"] < result.history[0]["loss"]
    assert last["backward_num_steps"] == 2.0  # the phantom gradient's k
    assert last["successful"] == 1.0 and last["num_steps"] >= 2
    for key in ("eval_accuracy", "eval_accuracy_T0", "eval_internalization"):
        assert 0 <= last[key] <= 1.5
    assert (tmp_path / "checkpoints" / "6").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, options, precision, solver_metric",
    [
        (
            "monotone-digits",
            jtrain.MonotoneDigitsOptions(hidden=16),
            "float32",
            "rel_residual",
        ),
        (
            "monotone-digits",
            jtrain.MonotoneDigitsOptions(hidden=16),
            "bfloat16",
            "rel_residual",
        ),
        (
            "node-digits",
            jtrain.NODEDigitsOptions(hidden=8, width=16),
            "float32",
            "num_fn_evals",
        ),
        (
            "ep-digits",
            jtrain.EPDigitsOptions(hidden=16),
            "float32",
            "nudged_num_steps",
        ),
        (
            "cgs-graphs",
            jtrain.CGSGraphsOptions(num_graphs=96, test_graphs=32),
            "float32",
            "nmse",
        ),
    ],
)
def test_other_family_recipes_train(tmp_path, name, options, precision, solver_metric):
    # EP's gradient estimate moves a sigmoid network more slowly than backprop
    # moves the others, and the graph regression starts far from its targets:
    # larger steps, the same number of steps.
    config = jtrain.TrainConfig(
        steps=8,
        batch_size=32,
        log_every=4,
        eval_every=8,
        checkpoint_every=8,
        learning_rate={"ep-digits": 3e-2, "cgs-graphs": 1e-2}.get(name, 3e-3),
        progress=False,
        precision=precision,
        run_dir=str(tmp_path),
    )
    result = jtrain.train(jtrain.RECIPES[name], config, options, log=lambda m: None)
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < first["loss"]
    if name == "cgs-graphs":
        # Regression: the held-out error falls below the targets' variance.
        assert np.isfinite(last[solver_metric]) and last["eval_nmse"] < 0.8
        assert last["rel_residual"] < 1e-5 and last["eval_rel_residual"] < 1e-5  # LU
    else:
        assert np.isfinite(last[solver_metric]) and last["eval_accuracy"] > 0.15
    if name == "monotone-digits":
        # The unique fixed point is found, and so is the transposed splitting's
        # (stopping test |f(z) - z| <= 1e-4 + 1e-4 |f(z)|: relative residual about
        # 1e-4 for |f(z)| of order one).
        assert last["successful"] == 1.0 and last["rel_residual"] < 5e-4
        assert last["backward_success"] == 1.0 and last["backward_num_steps"] >= 1
    elif name == "node-digits":
        # Dopri5: at least one accepted step of 6 stages; no residual to report.
        assert last["num_fn_evals"] >= 6 and "rel_residual" not in last
    elif name == "ep-digits":
        # Free and nudged relaxations converge (relative residual <= tol = 1e-5).
        assert last["rel_residual"] <= 1e-5 and last["nudged_rel_residual"] <= 1e-5
        assert last["nudged_num_steps"] >= 1 and "backward_num_steps" not in last
    assert (tmp_path / "checkpoints" / "8").exists()


@pytest.mark.slow
def test_ep_recipe_gradient_is_the_ep_estimate(getkey):
    # The loop differentiates the recipe's loss; that gradient must be the batch
    # mean of jaxdeq.ep.ep_gradient's estimates (not backpropagation), and the
    # loss value the cost at the free fixed point.
    options = jtrain.EPDigitsOptions(hidden=8)
    recipe = jtrain.RECIPES["ep-digits"]
    model = recipe.init(getkey(), options)
    train_data, _ = recipe.data(options)
    batch = {k: jnp.asarray(v[:6]) for k, v in train_data.items()}
    (loss, metrics), grads = eqx.filter_value_and_grad(recipe.loss, has_aux=True)(
        model, batch, getkey()
    )
    targets = jax.nn.one_hot(batch["y"], 10, dtype=jnp.float32)
    each = [
        jaxdeq.ep.ep_gradient(
            model.network,
            batch["x"][i],
            targets[i],
            beta=options.beta,
            # The recipe's solver: the estimates agree to float32 rounding.
            solver=jaxdeq.Anderson(rtol=options.tol, atol=1e-2 * options.tol),
            max_steps=options.max_solver_steps,
        )
        for i in range(6)
    ]
    expected = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *[g for g, _ in each])
    for got, want in zip(
        jax.tree.leaves(eqx.filter(grads.network, eqx.is_array)),
        jax.tree.leaves(expected),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        loss, np.mean([float(st.extra["loss"]) for _, st in each]), rtol=1e-6
    )
    # A symmetric network's gradient is not zero (the estimate is informative).
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(expected)) > 1e-4


@pytest.mark.unchecked  # an ill-typed estimator on purpose: the recipe's own error
def test_ep_recipe_refuses_an_unknown_estimator(getkey):
    recipe = jtrain.RECIPES["ep-digits"]
    with pytest.raises(ValueError, match="estimator"):
        recipe.init(getkey(), jtrain.EPDigitsOptions(estimator="two_sided"))  # pyright: ignore
