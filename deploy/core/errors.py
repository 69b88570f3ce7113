"""Exceptions a user can act on, each tied to the CLI exit code of docs/architecture.md.

The CLI catches ``ConvDeployError`` and exits with ``exit_code``; anything else is a
bug and exits 1 with a traceback hint.
"""


class ConvDeployError(Exception):
    """Base class: a one-line message naming the problem and the fix."""

    exit_code = 1


class BadInputError(ConvDeployError):
    """Bad usage or a bad input file (missing, corrupt, wrong format, mismatched weights)."""

    exit_code = 2


class LoadOptionsNeededError(BadInputError):
    """A model file that loads only with options saying what it is (``trust_pickle`` for a pickled
    module or a ``.pt2`` that runs code, ``arch``/``conv`` or ``model_class`` for a bare state_dict):
    ``reason`` says what the file is, ``fix`` which options load it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}: {fix}")
        self.reason, self.fix = reason, fix


class ParityError(ConvDeployError):
    """Numerical parity between two runtimes failed."""

    exit_code = 3


class AccuracyGateError(ConvDeployError):
    """An artifact's accuracy is below the gate it was given (exit 3, as a parity failure: do not ship)."""

    exit_code = 3


class GraphCheckError(ConvDeployError):
    """The ONNX graph has custom or unsupported ops, or computes conv weights at run time."""

    exit_code = 4


class BackendUnavailableError(ConvDeployError):
    """The requested backend (TensorRT, a GPU, an ONNX Runtime provider) is not available here."""

    exit_code = 5


class ClaimRefutedError(ConvDeployError):
    """At least one paper claim was refuted by `deploy claims`."""

    exit_code = 6


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name when
    it has none: what a one-line error says about the cause it wraps."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
