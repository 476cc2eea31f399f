"""Errors that anomalens raises for bad input. Each message names the file and the problem."""


class AnomalensError(Exception):
    """Base class: a problem with the user's input that the CLI prints as one line."""


class DataError(AnomalensError, ValueError):
    """A dataset folder, image or mask that cannot be used (missing, unreadable, wrong size, ...)."""


class ModelFileError(AnomalensError):
    """A saved run / model file that is missing, corrupt or incompatible with this version."""


class ConfigError(AnomalensError, ValueError):
    """An unknown detector name, backbone or an invalid hyper-parameter."""


class NotFittedError(AnomalensError, RuntimeError):
    """A detector used (scored, saved, calibrated) before ``fit``."""


class NumericalError(AnomalensError, ArithmeticError):
    """A model that gives NaN or infinite scores: its weights or parameters are broken."""


class Terminated(BaseException):
    """The command was asked to stop (SIGTERM): raised in the main thread so that staging folders are removed on
    the way out. A BaseException, like KeyboardInterrupt: ``except Exception`` must not swallow it."""
