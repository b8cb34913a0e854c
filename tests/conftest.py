import jax
import jax.random as jr
import pytest


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
