"""Errors raised for bad input data."""


class DataError(ValueError):
    """A data file or column that does not match the canonical contract; the message names it."""
