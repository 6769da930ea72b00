"""Exceptions raised by accel. Every message says what failed, the offending value, the
constraint and the fix. The command line prints them; library code never exits."""


class AccelError(Exception):
    """Base class of every error accel raises on purpose."""


class ConfigError(AccelError):
    """A model (or board) description is malformed; the message names the file and field."""


class ShapeError(AccelError):
    """An input tensor does not have the shape the model or operator expects."""


class NumericsError(AccelError):
    """A constant or shape would break a proven integer bound (overflow, inexact float BLAS)."""
