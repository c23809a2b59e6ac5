"""Exceptions raised by tomolive.

Every error derives from :class:`TomoliveError` and from the builtin it refines, so callers
can catch either (``except ValueError`` keeps working), as event-model does.
"""


class TomoliveError(Exception):
    """Base class of every error tomolive raises on purpose."""


class BadInputError(TomoliveError, ValueError):
    """An input array, document or parameter is not what a stage expects.

    The message names the input, what was expected and what was received.
    """


class MissingDataError(TomoliveError, LookupError):
    """Something a stage needs (darks, flats, a stored run) is absent."""


class ProcessingError(TomoliveError, RuntimeError):
    """A stage failed on valid input; the processed container is marked ``failed``."""


class ResultExistsError(TomoliveError, FileExistsError):
    """A result already exists where a new one would go; results are never overwritten."""
