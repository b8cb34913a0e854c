import os
import sysconfig

import numpy as np
from jaxtyping import Integer


# Index 0 stands for any character outside the vocabulary.
TEXT_VOCAB = "\x00\t\n" + "".join(chr(c) for c in range(32, 127))
"""The 98 characters of jaxdeq's character-level text data: id 0 for any unknown
character, then tab, newline and printable ASCII (space to `~`)."""
_LOOKUP = np.zeros(128, np.uint8)
for _i, _ch in enumerate(TEXT_VOCAB):
    _LOOKUP[ord(_ch)] = _i
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
}


def encode_text(text: str) -> Integer[np.ndarray, " n"]:
    """Encode text as character ids of [`jaxdeq.data.TEXT_VOCAB`][].

    Tab, newline and printable ASCII get their own ids; every other character maps
    to id 0 (unknown).

    **Arguments:**

    - `text`: a string.

    **Returns:**

    A uint8 NumPy array of ids, one per character.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = _LOOKUP[np.minimum(codes, 127)]
    return np.where(codes < 128, ids, 0).astype(np.uint8)


def decode_text(ids: Integer[np.ndarray, " n"]) -> str:
    """Decode character ids back to text (unknown characters become `"\\x00"`)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= len(TEXT_VOCAB)):
        raise ValueError(
            f"decode_text: ids must lie in [0, {len(TEXT_VOCAB)}), got "
            f"[{ids.min()}, {ids.max()}]."
        )
    return "".join(TEXT_VOCAB[int(i)] for i in ids.reshape(-1))


def stdlib_sources(root: str | None = None) -> list[str]:
    """The Python source files of the standard library, sorted by relative path.

    Test suites and installed third-party packages are left out. The set of files
    depends on the Python version: record it next to any result.

    **Arguments:**

    - `root`: the directory to search (default: this interpreter's standard
        library, `sysconfig.get_paths()["stdlib"]`).

    **Returns:**

    Relative paths of `.py` files under `root`.
    """
    root = root or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"stdlib_sources: {root!r} is not a directory.")
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS)
        for name in files:
            if name.endswith(".py"):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def load_stdlib_text(
    *,
    test_fraction: float = 0.1,
    max_train_chars: int | None = None,
    max_test_chars: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> tuple[
    Integer[np.ndarray, " train"], Integer[np.ndarray, " test"], list[str], list[str]
]:
    """Character-level text from the Python standard library's sources, split by file.

    A corpus that ships with every Python: the `.py` files of the standard library
    (tests excluded), split into training and held-out *files* by a seeded
    permutation, so held-out text comes from modules never seen in training. Files
    are concatenated in sorted order, each followed by a newline, and encoded with
    [`jaxdeq.data.encode_text`][].

    **Arguments:**

    - `test_fraction`: the fraction of files held out, in $(0, 1)$.
    - `max_train_chars`, `max_test_chars`: truncate each split to this many
        characters (`None`: all of it).
    - `seed`: the seed of the file permutation.
    - `root`: the directory to read (default: this interpreter's standard library).

    **Returns:**

    `(train_ids, test_ids, train_files, test_files)`: uint8 id arrays and the relative
    paths in each split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(
            "load_stdlib_text: `test_fraction` must lie strictly between 0 and 1, got "
            f"{test_fraction!r}."
        )
    root = root or sysconfig.get_paths()["stdlib"]
    files = stdlib_sources(root)
    if len(files) < 2:
        raise ValueError(
            f"load_stdlib_text: found {len(files)} source files under {root!r}; "
            "need at least two to split."
        )
    order = np.random.default_rng(seed).permutation(len(files))
    num_test = max(1, round(test_fraction * len(files)))
    test_files = sorted(files[i] for i in order[:num_test])
    train_files = sorted(files[i] for i in order[num_test:])

    def read(names, limit):
        parts, total = [], 0
        for name in names:
            with open(
                os.path.join(root, name), encoding="utf-8", errors="replace"
            ) as f:
                text = f.read() + "\n"
            parts.append(text)
            total += len(text)
            if limit is not None and total >= limit:
                break
        ids = encode_text("".join(parts))
        return ids if limit is None else ids[:limit]

    return (
        read(train_files, max_train_chars),
        read(test_files, max_test_chars),
        train_files,
        test_files,
    )
