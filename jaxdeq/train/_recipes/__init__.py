"""The training recipes, one file each; `RECIPES` lists them, by name."""

from .attractor_sudoku import ATTRACTOR_SUDOKU
from .cgs_graphs import CGS_GRAPHS
from .deq_digits import DEQ_DIGITS
from .ep_digits import EP_DIGITS
from .monotone_digits import MONOTONE_DIGITS
from .node_digits import NODE_DIGITS


# A new recipe: one file in this folder and one line here.
RECIPES = {
    recipe.name: recipe
    for recipe in (
        DEQ_DIGITS,
        ATTRACTOR_SUDOKU,
        MONOTONE_DIGITS,
        NODE_DIGITS,
        EP_DIGITS,
        CGS_GRAPHS,
    )
}
