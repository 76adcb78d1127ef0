"""Failures of one input file, recorded in the report instead of stopping the run."""


class ExtractionError(Exception):
    """A file (or one record of it) that cannot be read; the message says why and what to do."""
