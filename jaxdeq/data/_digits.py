import numpy as np
from jaxtyping import Float, Int


def load_digits(
    test_fraction: float = 0.2, seed: int = 0, *, standardise: bool = True
) -> tuple[
    Float[np.ndarray, "train 64"],
    Int[np.ndarray, " train"],
    Float[np.ndarray, "test 64"],
    Int[np.ndarray, " test"],
]:
    """The 8×8 handwritten digits bundled with scikit-learn, split and standardised.

    1797 images of the digits 0–9 as 64 features each. No download: the data ships
    with scikit-learn. The split is a seeded random permutation, the same for the same
    `seed`; features are standardised with the mean and standard deviation of the
    training set only (constant pixels are left at zero), so nothing about the test
    set leaks into the training data.

    **Arguments:**

    - `test_fraction`: the fraction of samples held out for testing, in $(0, 1)$.
    - `seed`: the seed of the permutation that splits the data.
    - `standardise`: if `False`, return the raw pixel intensities (integers 0–16 as
        floats) instead, e.g. to bin them into categories.

    **Returns:**

    `(x_train, y_train, x_test, y_test)` as NumPy arrays: features in float32 of shape
    `(n, 64)`, labels in int32 of shape `(n,)`. Pass them straight to JAX functions
    (or wrap them with `jnp.asarray`).

    **Raises:**

    `ValueError` if `test_fraction` is not strictly between 0 and 1.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(
            "load_digits: `test_fraction` must lie strictly between 0 and 1, got "
            f"{test_fraction!r}. Use e.g. `test_fraction=0.2`."
        )
    # Imported here: scikit-learn takes seconds to import and is needed only now.
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    # scikit-learn's return type also covers `return_X_y=True`, a tuple.
    x = np.asarray(digits.data, np.float64)  # pyright: ignore[reportAttributeAccessIssue]
    y = np.asarray(digits.target, np.int32)  # pyright: ignore[reportAttributeAccessIssue]
    order = np.random.default_rng(seed).permutation(len(x))
    num_test = max(1, round(test_fraction * len(x)))
    test, train = order[:num_test], order[num_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    if standardise:
        scale = lambda a: ((a - mean) / std).astype(np.float32)
    else:
        scale = lambda a: a.astype(np.float32)
    return scale(x[train]), y[train], scale(x[test]), y[test]
