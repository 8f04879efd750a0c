"""The one exception type for bad data."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file, row/line, column and/or id."""
