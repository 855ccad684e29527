"""Errors a user can cause. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations


class AutocompError(Exception):
    """Base class for every error caused by user input (files, flags, settings)."""


class SpaceError(AutocompError):
    """A search-space file or object is invalid: names the file, line, key and value."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        value: object = None,
    ) -> None:
        self.file, self.line, self.key, self.value = file, line, key, value
        where = file or "<search space>"
        if line is not None:
            where += f":{line}"
        detail = f"{where}: {message}"
        if key is not None:
            detail += f" (key '{key}'"
            detail += f", value {value!r})" if value is not None else ")"
        super().__init__(detail)


class DataError(AutocompError):
    """A dataset could not be found or read."""


class RunError(AutocompError):
    """A run directory is missing, incomplete, or used in a way it cannot be."""


class PackedFormatError(AutocompError):
    """A packed (.acz) file is corrupt or does not match the model it is loaded into."""


class CandidateStopped(Exception):  # noqa: N818 - not an error: a weak candidate stopped on purpose
    """Raised by an evaluator to stop a weak candidate early (multi-fidelity); the trial is `pruned`.

    `metrics` holds what was measured until then (e.g. accuracy after each fine-tuning epoch).
    """

    def __init__(self, reason: str, metrics: dict[str, float]) -> None:
        super().__init__(reason)
        self.metrics = metrics


class CandidateInfeasible(Exception):  # noqa: N818 - not an error: a candidate outside a hard bound
    """Raised by an evaluator when a candidate breaks a constraint on a metric its structure fixes.

    Such metrics are latency, FLOPs, stored parameters and peak activations: fine-tuning cannot change
    them, so the candidate is not fine-tuned or scored and the trial is `infeasible`. `metrics` holds those
    structural metrics.
    """

    def __init__(self, reason: str, metrics: dict[str, float]) -> None:
        super().__init__(reason)
        self.metrics = metrics
