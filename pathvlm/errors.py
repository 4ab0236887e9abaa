"""Errors that carry a message meant for the user (the CLI prints them without a traceback)."""


class PathVLMError(Exception):
    """Base class: the message says what went wrong and, where possible, what to do."""


class ImageError(PathVLMError):
    """An input image could not be read, or breaks a limit (pixels, size)."""


class SourceError(PathVLMError):
    """A model source string could not be resolved or loaded."""


class IndexError_(PathVLMError):
    """A retrieval index is missing, corrupt, or was built with another model."""


class MissingDependency(PathVLMError):
    """An optional package is needed for this command."""
