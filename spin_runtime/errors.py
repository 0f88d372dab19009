"""User-facing errors and the exit codes they end a step with: each says what is wrong and what
must change, naming the file or field. The exit codes tell a retry that cannot help (the same
spec, data or model fails the same way) from one that might (a full disk, a lost node)."""

from __future__ import annotations

#: Exit codes of `spin <step>` for failures a retry cannot fix (sysexits.h values); the operator's
#: podFailurePolicy fails the Job (or the generation index) at once on these instead of spending
#: retries. 2 is argparse's usage error: a broken command line is no better the second time.
EXIT_USAGE = 2
EXIT_BAD_DATA = 65  # EX_DATAERR: missing shards, no rows, bad columns
EXIT_BAD_MODEL = 66  # EX_NOINPUT: a model that cannot be found or loaded
EXIT_BAD_SPEC = 78  # EX_CONFIG: a spec that cannot run
DETERMINISTIC_EXIT_CODES: tuple[int, ...] = (EXIT_USAGE, EXIT_BAD_DATA, EXIT_BAD_MODEL, EXIT_BAD_SPEC)


class SpinError(RuntimeError):
    """A problem the user can fix (bad input, missing file); printed as one line by the CLI."""

    #: The process exit code; 1 = may be transient, worth a retry.
    exit_code = 1


class SpecConfigError(SpinError):
    """The spec asks for something that cannot run (the message names the field)."""

    exit_code = EXIT_BAD_SPEC


class DataError(SpinError):
    """Input or intermediate data is missing or malformed (the message names the file)."""

    exit_code = EXIT_BAD_DATA


class ModelError(SpinError):
    """A model cannot be found or loaded (the message names the source)."""

    exit_code = EXIT_BAD_MODEL


class RunDirError(SpinError):
    """The run directory is missing, unreadable or not writable (may be transient: a full disk)."""
