"""`benchmarks/accelerator.sh` runs unchanged on a CPU in its quick mode, and its
report never gives a speed for a failed solve."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.sh"


def _run(out, *args, env=()):
    # On the CPU whatever the machine has, so the report is named after "cpu".
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", **dict(env)}
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args, "--out", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "accelerator-cpu_quick.json",
        "accelerator-cpu_quick.md",
    ]
    md = (out / "accelerator-cpu_quick.md").read_text()
    record = json.loads((out / "accelerator-cpu_quick.json").read_text())
    return md, record


def _check_header(md, record):
    assert md.startswith("# Accelerator benchmark: cpu\n")
    assert f"- JAX {jax.__version__}," in md
    assert "- date: " in md
    assert "- mode: quick" in md
    assert record["device"]["device_slug"] == "cpu"
    assert record["config"]["quick"] is True
    for r in record["rows"]:
        assert "error" not in r, r.get("error")
        assert r["ok"], r
        assert r["run_s"] > 0 and r["throughput"] > 0
        assert r["peak_bytes"] is None  # the CPU has no memory statistics


@pytest.mark.slow
def test_quick_deq_on_cpu(tmp_path):
    # The DEQ rows in float32, quick mode chosen by the environment variable (a
    # subprocess that compiles its own programs: slow stage). The test below runs
    # every workload and dtype.
    md, record = _run(
        tmp_path,
        "--workloads",
        "deq",
        "--dtypes",
        "float32",
        env={"JAXDEQ_ACCELERATOR_QUICK": "1"},
    )
    _check_header(md, record)
    assert [(r["variant"], r["dtype"]) for r in record["rows"]] == [
        ("forward", "float32"),
        ("forward+backward", "float32"),
    ]
    assert all(r["compile_s"] > 0 for r in record["rows"])
    table = md.split("## DEQ", 1)[1].splitlines()
    rows = [line for line in table if line.startswith("| jaxdeq")]
    assert len(rows) == 2
    assert all(" | yes | " in line and line.endswith(" | n/a |") for line in rows)


@pytest.mark.slow
def test_quick_all_workloads_on_cpu(tmp_path):
    md, record = _run(tmp_path, "--quick")
    _check_header(md, record)
    got = {(r["workload"], r["variant"], r["dtype"]) for r in record["rows"]}
    for dtype in ("float32", "bfloat16"):
        assert ("deq", "forward", dtype) in got
        assert ("deq", "forward+backward", dtype) in got
        assert ("node", "forward+backward", dtype) in got
        assert ("train", "step", dtype) in got
    assert any(w == "pinn" for w, _, _ in got)
    for title in ("## DEQ", "## Neural ODE", "## Training step", "## PINN"):
        assert md.count(title) == 1


def test_failed_solve_shows_no_speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import accelerator
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    assert accelerator.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert accelerator.slug("TPU v5 lite") == "tpu-v5-lite"
    timing = dict(
        trace_s=0.5, compile_s=1.5, first_call_s=2.0, times=[0.25], xla_bytes=2**20
    )
    common = dict(workload="deq", impl="jaxdeq", steps="fwd 3", unit="samples/s")
    rows = [
        dict(common, variant="forward", dtype="float32", ok=True, **timing),
        dict(common, variant="forward", dtype="bfloat16", ok=False, **timing),
        dict(common, variant="forward+backward", dtype="float32", error="E\nBoom"),
    ]
    for r in rows[:2]:
        r.update(run_s=0.25, throughput=4096.0, peak_bytes=None)
    record = dict(
        config=dict(
            quick=False,
            isolate=True,
            batch=1024,
            hidden=1024,
            node_state=64,
            pinn_points=65536,
            pinn_steps=500,
            pinn_width=256,
            pinn_depth=3,
        ),
        device=dict(device_kind="Fake GPU", platform="gpu", device_count=1),
        versions=dict(jax="0", jaxlib="0", jaxdeq="0"),
        date="today",
        torch="not run",
        rows=rows,
    )
    lines = accelerator.markdown(record).splitlines()
    ok, failed, error = [line for line in lines if line.startswith("| jaxdeq")]
    assert " | yes | 2.00 | 2.000 | 0.25 (1) | 4,096 samples/s | 1 | n/a |" in ok
    assert " | **FAILED** | 2.00 | 2.000 | — | — | 1 | n/a |" in failed
    assert "0.25" not in failed and "4,096" not in failed
    assert "error: Boom" in error
    assert lines[0] == "# Accelerator benchmark: Fake GPU"
