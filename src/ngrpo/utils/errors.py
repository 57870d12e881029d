"""User-facing errors.

Library code raises `NgrpoError` (or a subclass) for problems a user can fix: a bad config value,
a missing model directory, a malformed data row. The CLI prints the message on one line and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class NgrpoError(Exception):
    """A problem with the user's input, described so that they can fix it."""


class NotAvailableError(NgrpoError):
    """A command or feature that has not been built yet."""
