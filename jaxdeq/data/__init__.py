"""Loaders for data that ships with a package or is generated offline."""

from ._digits import load_digits as load_digits
from ._graphs import graph_steady_states as graph_steady_states
from ._sudoku import (
    count_sudoku_solutions as count_sudoku_solutions,
    solve_sudoku as solve_sudoku,
    sudoku_augment as sudoku_augment,
    sudoku_is_solution as sudoku_is_solution,
    sudoku_peers as sudoku_peers,
    sudoku_puzzles as sudoku_puzzles,
)
from ._text import (
    decode_text as decode_text,
    encode_text as encode_text,
    load_stdlib_text as load_stdlib_text,
    stdlib_sources as stdlib_sources,
    TEXT_VOCAB as TEXT_VOCAB,
)
