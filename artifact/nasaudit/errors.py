"""The one exception type users see.

Raised at the boundaries (CLI, file readers, profile loader) with a single line that says what is
wrong and what to do; the CLI prints it without a traceback and exits with status 2.
"""


class NasauditError(Exception):
    """A user-facing error whose message is one line: the problem and the fix."""
