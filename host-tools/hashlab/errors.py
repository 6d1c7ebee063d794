"""Errors hashlab reports to its user: one clear line each, and an exit status."""


class HashlabError(Exception):
    """An error the CLI prints as one line (``hashlab: error: ...``)."""

    exit_status = 2


class UsageError(HashlabError):
    """Bad input from the user: a key, a hash type, a file, a scenario field."""

    exit_status = 2


class MissingToolError(HashlabError):
    """A program or file hashlab needs is not there; the message says how to get it."""

    exit_status = 3
