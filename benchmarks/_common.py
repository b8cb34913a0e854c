"""Helpers shared by the benchmark scripts (imported from the script's folder)."""

import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path


def versions(packages, jax, jaxdeq=None):
    """The machine, the package versions and a hash of jaxdeq's source: what the
    numbers of a run were measured on."""
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_at_start": os.getloadavg(),
    }
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    if jaxdeq is not None:  # work in progress: identify the exact source measured
        digest = hashlib.sha256()
        for f in sorted(Path(jaxdeq.__file__).parent.rglob("*.py")):
            digest.update(f.read_bytes())
        out["jaxdeq_source_sha256"] = digest.hexdigest()
    return out


def torch_peak_bytes(fn):
    """Peak of net CPU-allocator bytes during fn(), from profiler memory events."""
    from torch.profiler import profile, ProfilerActivity

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    live = peak = 0
    memory = [e for e in events if e.name() == "[memory]"]
    for e in sorted(memory, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak
