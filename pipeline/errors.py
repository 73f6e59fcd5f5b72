"""Errors caused by the user (bad flags, config, paths), as opposed to bugs.

The CLI turns these into a one-line message and a non-zero exit; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Base class of every error a user can fix by changing their input."""


class ConfigError(UserError, ValueError):
    """A config value is invalid, or conflicts with the config saved in `model_dir`."""


class UnknownNameError(UserError, LookupError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:
        # LookupError would otherwise quote the message like a KeyError.
        return str(self.args[0])


class ModelDirError(UserError):
    """`model_dir` is missing what a stage needs (for example, no checkpoint to evaluate)."""


class ExportError(UserError):
    """The export base is unusable, or the exported model does not reproduce the in-memory one."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite; nothing after the last finite step was saved."""


class TrainingStopped(Exception):  # noqa: N818  (a stop that was asked for, not a failure)
    """Training stopped on request (a signal) after saving a checkpoint of the step it reached."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(
            f"Training stopped at step {step} ({reason}); a checkpoint of step {step} was saved."
        )
        self.step = step
        self.reason = reason
