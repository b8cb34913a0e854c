import numpy as np
from jaxtyping import Bool, Int


_CELLS = 81
_ROW = [i // 9 for i in range(_CELLS)]
_COL = [i % 9 for i in range(_CELLS)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(_CELLS)]
_ALL = 0x3FE  # bits 1..9


def sudoku_peers() -> Bool[np.ndarray, "81 81"]:
    """Which cells of a 9×9 Sudoku see each other: the attention mask of a peer model.

    Cell $i$ (row-major, 0–80) and cell $j$ are peers when they share a row, a
    column or a 3×3 box; every cell has 20 peers. The diagonal is `True` as well, so
    a cell also attends to itself (21 `True` entries per row).

    **Returns:**

    A boolean NumPy array of shape `(81, 81)`.
    """
    row = np.array(_ROW)
    col = np.array(_COL)
    box = np.array(_BOX)
    return (
        (row[:, None] == row[None, :])
        | (col[:, None] == col[None, :])
        | (box[:, None] == box[None, :])
    )


def _check_grid(grid, name: str) -> list[int]:
    values = np.asarray(grid)
    if values.shape not in ((81,), (9, 9)):
        raise ValueError(
            f"{name}: a grid is 81 cells (shape (81,) or (9, 9)), got shape "
            f"{values.shape}."
        )
    values = values.reshape(81)
    if not np.issubdtype(values.dtype, np.integer) or np.any(
        (values < 0) | (values > 9)
    ):
        raise ValueError(
            f"{name}: cells must be integers 0-9 (0 = empty), got {values.dtype} "
            f"values in [{values.min()}, {values.max()}]."
        )
    return [int(v) for v in values]


def _search(cells: list[int], limit: int, rng: np.random.Generator | None) -> int:
    """Count solutions (up to `limit`), filling `cells` with the first one found."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if rows[_ROW[i]] & bit or cols[_COL[i]] & bit or boxes[_BOX[i]] & bit:
                return 0
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
    empty = [i for i, v in enumerate(cells) if v == 0]
    first: list[int] | None = None
    count = 0

    def recurse(open_cells: list[int]) -> None:
        nonlocal count, first
        if not open_cells:
            count += 1
            if first is None:
                first = list(cells)
            return
        # The most constrained cell first (fewest candidates).
        best, best_free, best_n = -1, 0, 10
        for idx, i in enumerate(open_cells):
            free = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = bin(free).count("1")
            if n < best_n:
                best, best_free, best_n = idx, free, n
                if n <= 1:
                    break
        if best_n == 0:
            return
        i = open_cells[best]
        rest = open_cells[:best] + open_cells[best + 1 :]
        digits = [d for d in range(1, 10) if best_free >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        r, c, b = _ROW[i], _COL[i], _BOX[i]
        for d in digits:
            bit = 1 << d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            cells[i] = d
            recurse(rest)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            cells[i] = 0
            if count >= limit:
                return

    recurse(empty)
    if first is not None:
        cells[:] = first
    return count


def count_sudoku_solutions(grid: Int[np.ndarray, "..."], limit: int = 2) -> int:
    """Count the solutions of a 9×9 Sudoku, stopping at `limit`.

    An exact backtracking search over bitmasks of the digits still free in each row,
    column and box, branching on the most constrained cell. A puzzle is *proper*
    (has a unique solution) when `count_sudoku_solutions(puzzle) == 1`.

    **Arguments:**

    - `grid`: 81 integers 0–9 (0 = empty), shape `(81,)` or `(9, 9)`.
    - `limit`: stop counting at this many solutions (2 suffices for uniqueness).

    **Returns:**

    The number of solutions, at most `limit` (0 for a contradictory grid).
    """
    if not (isinstance(limit, int) and limit >= 1):
        raise ValueError(
            f"count_sudoku_solutions: `limit` must be an int >= 1, got {limit!r}."
        )
    return _search(_check_grid(grid, "count_sudoku_solutions"), limit, None)


def solve_sudoku(grid: Int[np.ndarray, "..."]) -> Int[np.ndarray, " 81"]:
    """Solve a 9×9 Sudoku exactly (the first solution found).

    **Arguments:**

    - `grid`: 81 integers 0–9 (0 = empty), shape `(81,)` or `(9, 9)`.

    **Returns:**

    The solved grid as an int8 array of shape `(81,)`.

    **Raises:**

    `ValueError` if the grid has no solution.
    """
    cells = _check_grid(grid, "solve_sudoku")
    if _search(cells, 1, None) == 0:
        raise ValueError("solve_sudoku: the grid has no solution.")
    return np.array(cells, np.int8)


def _full_grid(rng: np.random.Generator) -> list[int]:
    cells = [0] * _CELLS
    _search(cells, 1, rng)
    return cells


def _puzzle(solution: list[int], givens: int, rng: np.random.Generator) -> list[int]:
    """Remove cells in random order while the solution stays unique."""
    puzzle = list(solution)
    filled = _CELLS
    for i in rng.permutation(_CELLS):
        if filled <= givens:
            break
        value = puzzle[i]
        puzzle[i] = 0
        if _search(list(puzzle), 2, None) == 1:
            filled -= 1
        else:
            puzzle[i] = value
    return puzzle


def sudoku_puzzles(
    num: int,
    *,
    givens: tuple[int, int] = (30, 40),
    seed: int = 0,
    exclude: Int[np.ndarray, "m 81"] | None = None,
) -> tuple[Int[np.ndarray, "num 81"], Int[np.ndarray, "num 81"]]:
    """Generate 9×9 Sudoku puzzles with unique solutions, offline and reproducibly.

    Each puzzle starts from a uniformly shuffled backtracking fill of an empty grid
    (a random complete solution grid); cells are then emptied in random order,
    keeping each removal only if the puzzle still has exactly one solution
    (checked by [`jaxdeq.data.count_sudoku_solutions`][]), until the number of
    givens reaches a target drawn uniformly from `givens` (or no cell can be
    removed: the puzzle is then minimal). Solution grids are distinct within a call
    and never equal to any grid in `exclude`.

    **Arguments:**

    - `num`: the number of puzzles.
    - `givens`: `(low, high)`, the inclusive range of the number of given cells; fewer
        givens make harder puzzles (about 17 is the minimum for a unique solution;
        targets below what removal can reach give minimal puzzles).
    - `seed`: the generator's seed; the same seed gives the same puzzles.
    - `exclude`: solution grids that must not be produced (e.g. the training set's,
        when generating a held-out set).

    **Returns:**

    `(puzzles, solutions)` as int8 arrays of shape `(num, 81)` in row-major order;
    0 marks an empty cell of a puzzle.
    """
    if not (isinstance(num, int) and num >= 0):
        raise ValueError(f"sudoku_puzzles: `num` must be an int >= 0, got {num!r}.")
    low, high = givens
    if not 17 <= low <= high <= 81:
        raise ValueError(
            "sudoku_puzzles: `givens` must be (low, high) with 17 <= low <= high <= "
            f"81 (17 is the fewest givens any proper Sudoku has), got {givens!r}."
        )
    rng = np.random.default_rng(seed)
    seen = set()
    if exclude is not None:
        seen = {bytes(np.asarray(g, np.int8).reshape(81)) for g in exclude}
    puzzles = np.zeros((num, _CELLS), np.int8)
    solutions = np.zeros((num, _CELLS), np.int8)
    k = 0
    while k < num:
        solution = _full_grid(rng)
        key = bytes(np.array(solution, np.int8))
        if key in seen:
            continue
        seen.add(key)
        target = int(rng.integers(low, high + 1))
        puzzles[k] = _puzzle(solution, target, rng)
        solutions[k] = solution
        k += 1
    return puzzles, solutions


def _band_permutation(rng: np.random.Generator) -> np.ndarray:
    """A permutation of 0..8 that keeps the three bands of three lines together."""
    bands = rng.permutation(3)
    return np.concatenate([3 * b + rng.permutation(3) for b in bands])


def sudoku_augment(
    puzzles: Int[np.ndarray, "n 81"],
    solutions: Int[np.ndarray, "n 81"],
    rng: np.random.Generator,
) -> tuple[Int[np.ndarray, "n 81"], Int[np.ndarray, "n 81"]]:
    """Apply a random symmetry of Sudoku to each (puzzle, solution) pair.

    The symmetries that map valid grids to valid grids: a relabelling of the digits
    1–9, a permutation of the three bands and of the rows within each band, the same
    for stacks and columns, and a transposition (with probability 1/2). Each pair
    gets its own symmetry; the puzzle and its solution get the same one, so the
    augmented puzzle is proper with the augmented solution as its answer.

    **Arguments:**

    - `puzzles`, `solutions`: int arrays of shape `(n, 81)`.
    - `rng`: a NumPy generator.

    **Returns:**

    The transformed `(puzzles, solutions)`, same shapes and dtypes.
    """
    puzzles = np.asarray(puzzles)
    solutions = np.asarray(solutions)
    if puzzles.shape != solutions.shape or puzzles.ndim != 2 or puzzles.shape[1] != 81:
        raise ValueError(
            "sudoku_augment: `puzzles` and `solutions` must both have shape (n, 81), "
            f"got {puzzles.shape} and {solutions.shape}."
        )
    n = puzzles.shape[0]
    out_p = np.empty_like(puzzles)
    out_s = np.empty_like(solutions)
    for k in range(n):
        relabel = np.concatenate([[0], 1 + rng.permutation(9)]).astype(puzzles.dtype)
        rows = _band_permutation(rng)
        cols = _band_permutation(rng)
        p = puzzles[k].reshape(9, 9)[rows][:, cols]
        s = solutions[k].reshape(9, 9)[rows][:, cols]
        if rng.random() < 0.5:
            p, s = p.T, s.T
        out_p[k] = relabel[p].reshape(81)
        out_s[k] = relabel[s].reshape(81)
    return out_p, out_s


def sudoku_is_solution(grid: Int[np.ndarray, "..."]) -> bool:
    """Whether 81 cells form a complete valid Sudoku grid (every row, column and box
    holds 1–9 once)."""
    g = np.asarray(grid).reshape(9, 9)
    target = set(range(1, 10))
    for i in range(9):
        box = g[3 * (i // 3) : 3 * (i // 3) + 3, 3 * (i % 3) : 3 * (i % 3) + 3]
        if set(g[i].tolist()) != target or set(g[:, i].tolist()) != target:
            return False
        if set(box.reshape(-1).tolist()) != target:
            return False
    return True
