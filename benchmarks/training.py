"""`jaxdeq train` against a hand-written plain-JAX loop, and data-parallel throughput.

Section "overhead": the `deq-digits` recipe (DEQ classifier, hidden 64, Anderson
forward, implicit backward, Adam lr 1e-3, batch 64, float32) trained by
`jaxdeq.train.train` (1 device, log every 10 steps, no checkpoint inside the timed
window) and by a plain loop written by hand for the same model, loss, optimiser and
batches: `eqx.filter_jit` step, NumPy batches, `block_until_ready` only at the
timing points. Both are timed in steady state from step 10 to step --steps (the
first steps include compilation), median of --repeats runs in this process.
Overhead = jaxdeq / plain - 1 (target: under 5 %).

Section "devices": examples per second of `jaxdeq.train.train` on 1, 2 and 4 forced
host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, one subprocess
each), global batch 256. On a 2-core CPU the devices share the same two cores, so
this measures the cost of the sharded program, not a speed-up: informational only.

    python benchmarks/training.py            # -> benchmarks/results/training.{json,md}
    python benchmarks/training.py --quick
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import jaxdeq
import jaxdeq.train as jtrain
from jaxdeq.train._mesh import batch_indices


sys.path.insert(0, str(Path(__file__).parent))
from _common import versions  # noqa: E402


RESULTS = Path(__file__).parent / "results"


def jaxdeq_run(steps, seed):
    config = jtrain.TrainConfig(
        steps=steps,
        batch_size=64,
        log_every=10,
        eval_every=10**9,
        checkpoint_every=10**9,
        progress=False,
        seed=seed,
        run_dir=tempfile.mkdtemp(),
    )
    result = jtrain.train(jtrain.DEQ_DIGITS, config, log=lambda s: None)
    times = {r["step"]: r["time"] for r in result.history}
    return (times[steps] - times[10]) / (steps - 10)


def plain_run(steps, seed):
    options = jtrain.DEQDigitsOptions()
    train, _ = jtrain.DEQ_DIGITS.data(options)
    key = jr.PRNGKey(seed)
    model = jtrain.DEQ_DIGITS.init(jr.split(key)[0], options)
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, x, y):
        def loss(m):
            logits, _ = jax.vmap(m)(x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = opt.update(
            grads, state, eqx.filter(model, eqx.is_inexact_array)
        )
        return eqx.apply_updates(model, updates), state, value

    n = len(train["x"])
    marks = {}
    for s in range(steps):
        idx = batch_indices(s, seed, n, 64)
        model, state, value = step(model, state, train["x"][idx], train["y"][idx])
        if (s + 1) in (10, steps):
            jax.block_until_ready(value)
            marks[s + 1] = time.time()
    return (marks[steps] - marks[10]) / (steps - 10)


_DEVICE_SCRIPT = """
import json, sys, tempfile
import jaxdeq.train as jtrain
n, steps = int(sys.argv[1]), int(sys.argv[2])
config = jtrain.TrainConfig(
    steps=steps, batch_size=256, devices=n, log_every=10, eval_every=10**9,
    checkpoint_every=10**9, progress=False, run_dir=tempfile.mkdtemp(),
)
r = jtrain.train(jtrain.DEQ_DIGITS, config, log=lambda s: None)
t = {h["step"]: h["time"] for h in r.history}
print(json.dumps({"step_time": (t[steps] - t[10]) / (steps - 10)}))
"""


def device_run(n, steps):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT, str(n), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["step_time"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=110)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 30, 1
    ours, plain = [], []
    for r in range(args.repeats):  # interleaved, so load changes hit both
        ours.append(jaxdeq_run(args.steps, r))
        plain.append(plain_run(args.steps, r))
    overhead = {
        "jaxdeq_step_s": statistics.median(ours),
        "plain_step_s": statistics.median(plain),
        "jaxdeq_all": ours,
        "plain_all": plain,
    }
    overhead["overhead"] = overhead["jaxdeq_step_s"] / overhead["plain_step_s"] - 1
    devices = []
    for n in (1, 2, 4):
        t = device_run(n, args.steps)
        devices.append({"devices": n, "step_s": t, "examples_per_s": 256 / t})
    out = {
        "args": vars(args),
        "overhead": overhead,
        "devices": devices,
        "versions": versions(
            ["jax", "equinox", "optax", "orbax-checkpoint"], jax, jaxdeq
        ),
    }
    lines = [
        "# Training loop: overhead and data-parallel throughput",
        "",
        f"| loop | step time (median of {args.repeats}) | ratio |",
        "|---|---|---|",
        "| plain JAX loop (hand-written) | "
        f"{overhead['plain_step_s'] * 1e3:.2f} ms | 1.00 |",
        f"| jaxdeq.train.train | {overhead['jaxdeq_step_s'] * 1e3:.2f} ms | "
        f"{1 + overhead['overhead']:.3f} |",
        "",
        "| forced host devices | step time (batch 256) | examples / s |",
        "|---|---|---|",
    ]
    for d in devices:
        lines.append(
            f"| {d['devices']} | {d['step_s'] * 1e3:.1f} ms | "
            f"{d['examples_per_s']:.0f} |"
        )
    lines.append("")
    lines.append("Forced host devices share this machine's cores: informational only.")
    RESULTS.mkdir(exist_ok=True)
    stem = "training_quick" if args.quick else "training"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
