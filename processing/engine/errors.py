"""Exceptions raised by the engine. Their messages are meant for the user."""


class GullySegError(Exception):
    """Bad input or a failed step. The message names the file/parameter and the problem."""


class Cancelled(GullySegError):
    """The user cancelled the run. Partial outputs have been removed."""

    def __init__(self, message="Cancelled by the user"):
        super().__init__(message)
