"""One module per verb: parse options, call one library function, report."""

from ctfa_cli.errors import CtfaUsageError


def not_available(verb: str) -> CtfaUsageError:
    """The error a verb raises while it cannot do its work yet (exit 2, never a fake success)."""
    return CtfaUsageError(f"`ctfa {verb}` is not implemented yet in this version")
