"""Helpers shared by the benchmark scripts (imported from the script's folder)."""


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
