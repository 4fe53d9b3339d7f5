"""Typed trainer failures. Each carries the ExitCode (from the API) the operator reads back."""

from __future__ import annotations

from kubetune_api.results import ExitCode


class TrainerError(Exception):
    """A failure with a known cause; `message` is shown to the user as is (it never holds secrets)."""

    code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(TrainerError):
    code = ExitCode.INVALID_CONFIG


class DataError(TrainerError):
    """Bad training data. `problems` holds one line per bad record: file, 1-based row, field, expectation."""

    code = ExitCode.DATA_INVALID

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        detail = "".join(f"\n  - {p}" for p in shown) + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(message + detail)


class AccessDenied(TrainerError):
    code = ExitCode.ACCESS_DENIED


class NotFound(TrainerError):
    code = ExitCode.NOT_FOUND


class OutOfMemory(TrainerError):
    code = ExitCode.OUT_OF_MEMORY


class Transient(TrainerError):
    """Worth retrying: the network or a service was unavailable."""

    code = ExitCode.TRANSIENT


def classify(err: BaseException) -> TrainerError | None:
    """Map a library exception (torch OOM, botocore) to a typed error; None when it is a bug."""
    if isinstance(err, TrainerError):
        return err
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return OutOfMemory(f"out of memory: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
                           "lower training.batchSize or dataset.maxSeqLength, enable "
                           "training.gradientCheckpointing, use method.type qlora, or raise resources.memory")
    if type(err).__name__ == "UnpicklingError":
        return ConfigError(f"the model's pickle weights cannot be loaded safely ({str(err).splitlines()[0][:300]}); "
                           "convert the model to safetensors")
    return None
