import json
import pathlib

from .._optional import matplotlib_figure
from ._checkpoint import from_strict_record


def load_history(run_dir) -> list[dict]:
    """The metric records of a run, from `run_dir/metrics.jsonl`.

    **Arguments:**

    - `run_dir`: the run's directory (`TrainConfig.run_dir`).

    **Returns:**

    A list of dicts, one per logged step. The file is strict JSON: a value that was
    NaN or infinite is written as `null` and named in the line's `nonfinite` map;
    here it is a float again (`nan`, `inf` or `-inf`).
    """
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    return [
        from_strict_record(json.loads(line))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def plot_history(history: list[dict], path) -> pathlib.Path:
    """Loss, accuracy, solver steps and residuals (forward, backward and on the
    evaluation data) over training, as one PNG, each panel titled and each curve
    labelled by its metric's name: the solve report's `num_steps` and
    `rel_residual`, `backward_num_steps` and `backward_rel_residual`, and their
    `eval_` counterparts.

    **Arguments:**

    - `history`: metric records (from [`jaxdeq.train.train`][] or
        [`jaxdeq.train.load_history`][]).
    - `path`: where to write the PNG.

    **Returns:**

    The path written.
    """
    # Drawn without pyplot, so the caller's backend is left alone (switching it to
    # Agg here would stop a notebook's own figures from showing).
    figure = matplotlib_figure("plot_history")
    panels = [
        ("loss", ("loss",), "log"),
        ("accuracy", ("accuracy", "eval_accuracy"), "linear"),
        (
            "num_steps",
            ("num_steps", "backward_num_steps", "eval_num_steps"),
            "linear",
        ),
        (
            "rel_residual",
            ("rel_residual", "backward_rel_residual", "eval_rel_residual"),
            "log",
        ),
    ]
    panels = [p for p in panels if any(k in r for r in history for k in p[1])]
    fig = figure(figsize=(4 * max(len(panels), 1), 3))
    axes = fig.subplots(1, max(len(panels), 1))
    axes = [axes] if len(panels) <= 1 else list(axes)
    for ax, (title, keys, scale) in zip(axes, panels):
        for key in keys:
            points = [
                (r["step"], float("nan") if r[key] is None else r[key])
                for r in history
                if key in r
            ]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, "o-" if len(points) < 30 else "-", label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale(scale)
        ax.legend()
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    return path
