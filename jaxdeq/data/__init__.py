"""Loaders for data that ships with a package or is generated offline."""

from ._digits import load_digits as load_digits
