"""The exception hierarchy of thresher.

Every error a user can cause derives from :class:`ThresherError`, so a caller
can catch them all in one place, and the CLI can turn them into a one-line
message with a non-zero exit code instead of a traceback.

Messages follow one shape, borrowed from scikit-learn: they name the parameter,
file, column or row at fault, say what was expected, and what was got.
"""

from __future__ import annotations

from typing import Any


class ThresherError(Exception):
    """Base class of every error thresher raises on purpose."""


class ThresherWarning(UserWarning):
    """A warning thresher gives its user on purpose (the CLI prints it as one line, ``warning: ...``, without a source line)."""


class ParameterError(ThresherError, ValueError):
    """A parameter has a value outside what it accepts."""


class InputDataError(ThresherError, ValueError):
    """The user's data is unusable: unreadable file, missing column, bad row."""


class ArtifactError(ThresherError):
    """An artefact directory is missing, incomplete, corrupt or of another kind."""


class IncompleteArtifactError(ArtifactError):
    """An artefact directory has no manifest: it was never finished."""


class DimensionMismatchError(ThresherError, ValueError):
    """Two things that must share a vector width do not."""


class EnvironmentProblemError(ThresherError):
    """Something outside the user's input stops the run: a package not installed, a host or scheduler unreachable.

    The CLI exits with 1 for these (the environment), not 2 (the user's input):
    the same command can succeed once the package is installed or the host is up.
    """

    exit_code = 1


class SlurmJobError(EnvironmentProblemError):
    """SLURM worker jobs cannot do the work: sbatch refused them, they never started, or they keep ending.

    Raised after every job thresher submitted has been cancelled (see :mod:`thresher.jobs.slurm`);
    the message names SLURM's own reason (sbatch's error, ``squeue``'s reason, the job's state and log file).
    """


def parameter_error(owner: str, name: str, expected: str, got: Any) -> ParameterError:
    """Build the standard message for a bad parameter.

    >>> str(parameter_error("RDSPlus", "budget", "an int >= 1", 0))
    "The 'budget' parameter of RDSPlus must be an int >= 1; got 0."
    """
    return ParameterError(f"The {name!r} parameter of {owner} must be {expected}; got {got!r}.")
