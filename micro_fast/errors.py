"""The library's own exceptions.

Every error the library raises for bad input is one of these. Each also derives from the
built-in exception such code has always raised (``ValueError``, ``TypeError``,
``FileNotFoundError``, ``RuntimeError``, ``MemoryError``), so ``except ValueError`` keeps
working, while a caller such as the command line can tell bad input (``MicroFastError``) from a
bug (anything else).
"""

from __future__ import annotations


class MicroFastError(Exception):
    """Base of the errors micro_fast raises for bad input or an unusable setup."""


class InputError(MicroFastError, ValueError):
    """An argument, file content or option has an invalid value."""


class InputTypeError(MicroFastError, TypeError):
    """An argument has the wrong type or dtype."""


class MissingFileError(MicroFastError, FileNotFoundError):
    """A file or folder the call needs does not exist."""


class UnavailableError(MicroFastError, RuntimeError):
    """A requested backend or compiled part is not available here."""
