import os


# The suite compiles hundreds of small programs and runs each a few times, so XLA's
# backend optimisation costs more than it saves: without it, compilation is about a
# fifth faster, and results agree within the tests' tolerances (which do not
# depend on it). Set before JAX starts its backend; a user's own XLA_FLAGS are kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import jaxtyping  # noqa: E402
import pytest  # noqa: E402


jax.config.update("jax_enable_x64", True)
# As optimistix tests itself: no silent promotions anywhere in the library.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """Fresh PRNG keys, deterministic per test."""
    state = {"key": jr.PRNGKey(5678)}

    def _getkey():
        state["key"], sub = jr.split(state["key"])
        return sub

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Each program XLA compiles for the CPU holds tens of memory mappings for its
    machine code, and JAX keeps every program alive in its caches. One xdist
    worker that compiles the whole suite passes the kernel's limit on mappings per
    process (`vm.max_map_count`, 65530 by default), and LLVM then fails with
    "Cannot allocate memory" and the worker crashes mid-compile. Within a module,
    programs stay cached, so tests that share a problem compile it once.
    """
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _runtime_type_checks(request):
    """jaxtyping's runtime checks (on for the whole suite, see pyproject's
    `--jaxtyping-packages`) are off in a test marked `unchecked`: one that passes
    ill-typed input on purpose to test the library's own error, which is what a
    user who does not run the checks gets."""
    if request.node.get_closest_marker("unchecked") is None:
        yield
        return
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
