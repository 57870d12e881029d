"""User-facing errors, and how a run that was asked to stop ends.

Library code raises `NgrpoError` (or a subclass) for problems a user can fix: a bad config value,
a missing model directory, a malformed data row. The CLI prints the message on one line and exits
with the error's `exit_code` (2); anything else is a bug and keeps its traceback.

Stopping on a signal (`ngrpo.trainer.stop`) ends in one of two ways:
- `TrainingStopped` (exit code 75, `EX_TEMPFAIL` of BSD's sysexits: "try again later"): the first
  SIGTERM / SIGINT; training finished its current step and wrote a complete checkpoint, and
  `--resume` continues exactly. Not an error: the CLI prints it as `stopped: ...`;
- `Interrupted` (a `KeyboardInterrupt`, exit code 128 + the signal: 130 for SIGINT, 143 for
  SIGTERM, the shell's codes for a process killed by that signal): a second signal; the run left
  at once, without a checkpoint of the current step (the previous complete one is intact).
"""

STOPPED_EXIT_CODE = 75


class NgrpoError(Exception):
    """A problem with the user's input, described so that they can fix it."""

    exit_code = 2


class NotAvailableError(NgrpoError):
    """A command or feature that has not been built yet."""


class TrainingStopped(NgrpoError):
    """Training stopped on request (SIGTERM / SIGINT) after writing a complete checkpoint."""

    exit_code = STOPPED_EXIT_CODE


class Interrupted(KeyboardInterrupt):
    """A second stop signal: the run was left at once (exit code 128 + the signal's number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by a second signal ({signum})")
        self.exit_code = 128 + signum
