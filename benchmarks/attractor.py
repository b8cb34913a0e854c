"""Attractor refiners against a backbone alone and a looped model: one script, one run.

Two tasks, generated or read offline:

- **sudoku**: 9x9 puzzles with unique solutions from `jaxdeq.data.sudoku_puzzles`
  (--givens range of given cells); the held-out puzzles' solution grids never
  appear in training (`exclude=`), training puzzles are augmented on the fly by
  random Sudoku symmetries (`jaxdeq.data.sudoku_augment`). Every attention block
  attends only to each cell's 20 peers and itself (`jaxdeq.data.sudoku_peers`).
  Loss: cross-entropy over the 81 cells. Metrics on the held-out set: accuracy on
  the empty cells and exact-puzzle accuracy (all 81 cells right).
- **text**: a character-level language model on the Python standard library's
  sources (`jaxdeq.data.load_stdlib_text`, held-out *files*), context 128, causal
  attention, next-character cross-entropy. Metric: bits per character on fixed
  held-out windows.

Rows at matched parameter counts (every block is an `AttentionBlock` of width
--dim; the backbone alone gets the refiner's blocks as extra layers):

- (a) backbone alone: 2 + 2 blocks, decoded directly;
- (b) looped: 2 backbone blocks + a 2-block `GatedRefiner` applied T = 8 times
  from the proposal with backpropagation through the loop (`steps=8`);
- (c) attractor: the same architecture, refined to the fixed point by
  `jaxdeq.Anderson` (m = 5, ridge 1e-4; tol 1e-3 for Sudoku, 3e-4 for text; at
  least 2 and at most --max-steps steps), backward by phantom k = 2 plus Jacobian
  penalty 1e-3 (Sudoku) or Neumann-1 with clip 1 (text);
- (d) the attractor of (c) evaluated at T = 0 (proposal decoded) and T = 1.

(b) and (c) are also evaluated at plain-iteration budgets T = 8 and 32 to show
whether refinement is stable as T grows. Training memory: XLA's compiled temporary
bytes of one training step at maximum iterations 8 and 32 ((b): T = 8 and 32
unrolled; (c): max_steps 8 and 32). Same number of steps, batch and optimiser
(AdamW, warm-up then cosine decay, gradient clipping 1) for every row; three seeds.

    python benchmarks/attractor.py          # -> benchmarks/results/attractor.{json,md}
    python benchmarks/attractor.py --quick  # smoke test (-> attractor_quick.*)
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jaxdeq
import jaxdeq.data
from jaxdeq.attractor import (
    AttentionBlock,
    AttractorRefiner,
    causal_mask,
    evaluate_budgets,
    GatedRefiner,
    TokenBackbone,
    TokenDecoder,
)


sys.path.insert(0, str(Path(__file__).parent))
from _common import versions  # noqa: E402


RESULTS = Path(__file__).parent / "results"
LN2 = float(np.log(2.0))


def build(kind, task, args, key):
    """The model of one row; every row has the same blocks, so the same size."""
    if task == "sudoku":
        vocab, length, classes, mask = 10, 81, 9, jaxdeq.data.sudoku_peers()
        solver = jaxdeq.Anderson(rtol=1e-3, atol=1e-6, memory=5, ridge=1e-4)
        adjoint = jaxdeq.PhantomAdjoint(steps=2)
        jacobian_weight = 1e-3
    else:
        vocab, length, classes = len(jaxdeq.data.TEXT_VOCAB), 128, None
        classes = vocab
        mask = causal_mask(length)
        solver = jaxdeq.Anderson(rtol=3e-4, atol=1e-6, memory=5, ridge=1e-4)
        adjoint = jaxdeq.NeumannAdjoint(terms=1, clip=1.0)
        jacobian_weight = 0.0
    k1, k2, k3 = jr.split(key, 3)
    depth = 4 if kind == "backbone" else 2
    backbone = TokenBackbone(vocab, length, args.dim, depth, args.heads, mask, key=k1)
    blocks = [
        AttentionBlock(args.dim, args.heads, mask, key=k) for k in jr.split(k2, 2)
    ]
    refiner = GatedRefiner(blocks if kind != "backbone" else blocks[:1], args.dim)
    decoder = TokenDecoder(args.dim, classes, key=k3)
    return AttractorRefiner(
        backbone,
        refiner,
        decoder,
        solver=solver,
        adjoint=adjoint,
        min_steps=2,
        max_steps=args.max_steps,
        # The backbone alone never runs the refiner: no penalty on it.
        jacobian_weight=0.0 if kind == "backbone" else jacobian_weight,
    )


def train_steps(kind):
    return {"backbone": 0, "looped": 8, "attractor": None}[kind]


def count_params(model, kind):
    parts = [model.backbone, model.decoder]
    if kind != "backbone":
        parts.append(model.refiner)
    return sum(
        int(x.size)
        for p in parts
        for x in jax.tree.leaves(eqx.filter(p, eqx.is_array))
        if jnp.issubdtype(x.dtype, jnp.inexact)
    )


def cross_entropy(logits, targets):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def make_step(static, optim, steps, task):
    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss(params):
            model = eqx.combine(params, static)
            keys = jr.split(key, x.shape[0])
            out, report = jax.vmap(lambda a, k: model(a, steps=steps, key=k))(x, keys)
            ce = jnp.mean(cross_entropy(out, y))
            penalty = jnp.mean(report.extra["jacobian_penalty"])
            return ce + penalty, (ce, report)

        (_, (ce, report)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optim.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        internal = jnp.mean(report.extra["internalization"])
        stats = (ce, jnp.mean(report.num_steps), internal)
        return params, opt_state, stats

    return step


def memory_bytes(model, steps, x, y, optim):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optim.init(params)
    step = make_step(static, optim, steps, None)
    compiled = step.lower(params, opt_state, x, y, jr.PRNGKey(0)).compile()
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


class SudokuData:
    def __init__(self, args, seed):
        t0 = time.perf_counter()
        self.train_p, self.train_s = jaxdeq.data.sudoku_puzzles(
            args.train_size, givens=tuple(args.givens), seed=1000 + seed
        )
        self.test_p, self.test_s = jaxdeq.data.sudoku_puzzles(
            args.test_size,
            givens=tuple(args.givens),
            seed=2000 + seed,
            exclude=self.train_s,
        )
        self.generate_s = time.perf_counter() - t0
        self.rng = np.random.default_rng(seed)

    def batch(self, size):
        idx = self.rng.integers(0, len(self.train_p), size)
        p, s = jaxdeq.data.sudoku_augment(
            self.train_p[idx], self.train_s[idx], self.rng
        )
        return p.astype(np.int32), (s - 1).astype(np.int32)

    def test(self):
        # The targets carry the blank-cell mask, so it is chunked with the labels.
        blank = self.test_p == 0
        return self.test_p.astype(np.int32), ((self.test_s - 1).astype(np.int32), blank)

    def metrics(self):
        def fn(logits, targets):
            labels, blank = targets
            right = jnp.argmax(logits, -1) == labels
            # The given cells are copied from the input: a solution has them right.
            cells = jnp.sum(right & blank, -1) / jnp.sum(blank, -1)
            return {"cell_accuracy": cells, "exact": jnp.all(right, -1)}

        return fn


class TextData:
    def __init__(self, args, seed):
        self.train, self.held_out, self.train_files, self.test_files = (
            jaxdeq.data.load_stdlib_text(
                max_train_chars=args.train_chars, max_test_chars=args.test_chars
            )
        )
        self.generate_s = 0.0
        self.rng = np.random.default_rng(seed)
        n = (len(self.held_out) - 1) // 128
        starts = np.arange(n) * 128
        self.test_x = np.stack([self.held_out[s : s + 128] for s in starts]).astype(
            np.int32
        )
        self.test_y = np.stack([self.held_out[s + 1 : s + 129] for s in starts]).astype(
            np.int32
        )

    def batch(self, size):
        starts = self.rng.integers(0, len(self.train) - 129, size)
        x = np.stack([self.train[s : s + 128] for s in starts]).astype(np.int32)
        y = np.stack([self.train[s + 1 : s + 129] for s in starts]).astype(np.int32)
        return x, y

    def test(self):
        return self.test_x, self.test_y

    def metrics(self):
        def fn(logits, targets):
            return {"bits_per_char": jnp.mean(cross_entropy(logits, targets), -1) / LN2}

        return fn


def run_row(kind, task, data, args, seed):
    key = jr.PRNGKey(seed)
    model = build(kind, task, args, key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, args.steps // 20), args.steps, args.lr / 10
    )
    optim = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-2)
    )
    opt_state = optim.init(params)
    step = make_step(static, optim, train_steps(kind), task)
    x, y = data.batch(args.batch)
    t0 = time.perf_counter()
    params, opt_state, stats = step(params, opt_state, x, y, jr.PRNGKey(0))
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - t0
    history = []
    t0 = time.perf_counter()
    for i in range(1, args.steps):
        x, y = data.batch(args.batch)
        params, opt_state, stats = step(params, opt_state, x, y, jr.fold_in(key, i))
        if i % args.log_every == 0 or i == args.steps - 1:
            ce, steps, internal = (float(s) for s in stats)
            history.append(
                {"step": i, "loss": ce, "steps": steps, "internalization": internal}
            )
            print(
                f"  {task} {kind} seed {seed} step {i}: loss {ce:.4f} "
                f"steps {steps:.1f} internalization {internal:.3f}",
                flush=True,
            )
    jax.block_until_ready(params)
    train_s = time.perf_counter() - t0
    model = eqx.combine(params, static)
    test_x, test_y = data.test()
    budgets = {"backbone": (0,), "looped": (8, 32), "attractor": (0, 1, 8, 32, None)}[
        kind
    ]
    report = evaluate_budgets(
        model, test_x, test_y, data.metrics(), budgets, batch_size=args.eval_batch
    )
    memory = {}
    if kind != "backbone" and seed == 0:  # the same for every seed
        small_x, small_y = data.batch(args.batch)
        for t in (8, 32):
            if kind == "looped":
                memory[t] = memory_bytes(model, t, small_x, small_y, optim)
            else:
                m = dataclasses.replace(model, max_steps=t)
                memory[t] = memory_bytes(m, None, small_x, small_y, optim)
    return {
        "kind": kind,
        "seed": seed,
        "params": count_params(model, kind),
        "compile_s": compile_s,
        "train_s": train_s,
        "step_ms": 1000 * train_s / max(1, args.steps - 1),
        "history": history,
        "eval": report,
        "memory_bytes": memory,
    }


def _memory(row, steps):
    # Keys are ints in the run and strings after a JSON round trip.
    memory = row["memory_bytes"]
    return memory.get(steps, memory.get(str(steps)))


def summarise(rows, task):
    main = "exact" if task == "sudoku" else "bits_per_char"
    second = "cell_accuracy" if task == "sudoku" else None
    out = []

    def stat(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {
            "mean": statistics.fmean(values),
            "min": min(values),
            "max": max(values),
        }

    for kind, budgets in (
        ("backbone", [("T=0", "(a) backbone alone")]),
        (
            "looped",
            [("T=8", "(b) looped, T = 8 (trained)"), ("T=32", "(b) looped, T = 32")],
        ),
        (
            "attractor",
            [
                ("converged", "(c) attractor, solved"),
                ("T=8", "(c) attractor, T = 8"),
                ("T=32", "(c) attractor, T = 32"),
                ("T=0", "(d) attractor, T = 0"),
                ("T=1", "(d) attractor, T = 1"),
            ],
        ),
    ):
        these = [r for r in rows if r["kind"] == kind]
        if not these:
            continue
        for budget, label in budgets:
            entry = {
                "row": label,
                "params": these[0]["params"],
                main: stat([r["eval"][budget][main] for r in these]),
                "steps": stat([r["eval"][budget]["steps"] for r in these]),
                "internalization": stat(
                    [r["eval"][budget]["internalization"] for r in these]
                ),
                "converged": stat([r["eval"][budget]["converged"] for r in these]),
                "step_ms": stat([r["step_ms"] for r in these]),
                "memory_8": stat([_memory(r, 8) for r in these]),
                "memory_32": stat([_memory(r, 32) for r in these]),
            }
            if second:
                entry[second] = stat([r["eval"][budget][second] for r in these])
            out.append(entry)
    return out


def markdown(summary, task, meta):
    main = "exact" if task == "sudoku" else "bits_per_char"
    fmt = lambda s, f="{:.3f}": (
        "—"
        if s is None
        else (
            f.format(s["mean"])
            + " ["
            + f.format(s["min"])
            + ", "
            + f.format(s["max"])
            + "]"
        )
    )
    mib = lambda s: "—" if s is None else f"{s['mean'] / 2**20:.1f}"
    tail = (
        "steps | meets tol | ‖y−c‖/‖c‖ | step ms | train MiB (max iterations 8) | "
        "train MiB (32) |"
    )
    if task == "sudoku":
        head = "| row | params | cell accuracy (blanks) | exact puzzles | " + tail
    else:
        head = "| row | params | bits per char | " + tail
    lines = [f"### {task}", "", meta, "", head, "|" + "---|" * (head.count("|") - 1)]
    for e in summary:
        cols = [e["row"], str(e["params"])]
        if task == "sudoku":
            cols += [fmt(e["cell_accuracy"]), fmt(e["exact"])]
        else:
            cols += [fmt(e[main])]
        # Training cost belongs to the trained configuration's row only.
        trained = e["row"].startswith("(a)") or "trained" in e["row"]
        trained = trained or "solved" in e["row"]
        cols += [
            fmt(e["steps"], "{:.1f}"),
            fmt(e["converged"], "{:.2f}"),
            fmt(e["internalization"], "{:.3f}"),
            fmt(e["step_ms"], "{:.0f}") if trained else "",
            mib(e["memory_8"]) if trained else "",
            mib(e["memory_32"]) if trained else "",
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def describe(task, config, versions, minutes):
    """The line above a task's table: data, budget, seeds and time."""
    common = (
        f"{config['steps']} steps of batch {config['batch']}; {config['seeds']} seeds "
        f"(mean [min, max]); {minutes:.1f} min for the task on "
        f"{versions['cpu_count']} CPU cores."
    )
    if task == "sudoku":
        low, high = config["givens"]
        return (
            f"{config['train_size']} training puzzles ({low}–{high} givens, "
            f"symmetry-augmented), {config['test_size']} held-out puzzles with unseen "
            f"solution grids; {common}"
        )
    return (
        f"{config['train_chars']} training characters, {config['test_chars']} "
        f"held-out characters from other files (Python {versions['python']} standard "
        f"library), context 128; {common}"
    )


def render(name):
    """Rewrite `name`.md from `name`.json (after a change of the table layout)."""
    results = json.loads((RESULTS / f"{name}.json").read_text())
    text = ["# Attractor refiners", ""]
    for task, entry in results["tasks"].items():
        summary = summarise(entry["rows"], task)
        meta = describe(task, results["config"], results["versions"], entry["minutes"])
        text += [markdown(summary, task, meta), ""]
    (RESULTS / f"{name}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sudoku", "text"])
    parser.add_argument(
        "--kinds", nargs="+", default=["backbone", "looped", "attractor"]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: 400 per task")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--givens", type=int, nargs=2, default=[34, 42])
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--train-chars", type=int, default=2_000_000)
    parser.add_argument("--test-chars", type=int, default=65_536)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the .json"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train_size, args.test_size = 1, 200, 64
        args.train_chars, args.test_chars, args.log_every = 50_000, 4096, 10
    name = args.out or ("attractor_quick" if args.quick else "attractor")
    if args.render:
        return render(name)
    RESULTS.mkdir(exist_ok=True)
    results = {
        "config": vars(args),
        "versions": versions(["jax", "equinox", "optax", "optimistix"], jax, jaxdeq),
        "tasks": {},
    }
    text = ["# Attractor refiners", ""]
    fixed_steps = args.steps
    for task in args.tasks:
        args.steps = fixed_steps or (20 if args.quick else 400)
        rows = []
        t_task = time.perf_counter()
        for seed in range(args.seeds):
            data = SudokuData(args, seed) if task == "sudoku" else TextData(args, seed)
            for kind in args.kinds:
                rows.append(run_row(kind, task, data, args, seed))
                print(
                    json.dumps({k: v for k, v in rows[-1].items() if k != "history"}),
                    flush=True,
                )
        summary = summarise(rows, task)
        minutes = (time.perf_counter() - t_task) / 60
        meta = describe(task, vars(args), results["versions"], minutes)
        results["tasks"][task] = {"rows": rows, "summary": summary, "minutes": minutes}
        text += [markdown(summary, task, meta), ""]
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
        (RESULTS / f"{name}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
