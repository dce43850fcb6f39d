"""Expected errors: the CLI turns them into a one-line message and an exit code, no traceback."""


class CtfaError(Exception):
    """A runtime or domain error (bad file, wrong bands, missing data). Exit status 1.

    The message is one line that names the file and says how to fix it.
    """

    exit_code = 1


class CtfaUsageError(CtfaError):
    """Bad usage (an invalid option value, a config typo, a verb that is not available). Exit 2."""

    exit_code = 2
