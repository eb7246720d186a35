"""User-facing errors.  Every message names the file / layer / field involved."""


class QcaffeError(Exception):
    """Base of all errors qcaffe raises for bad input (the message is meant for the user)."""


class ProtoParseError(QcaffeError):
    """A text prototxt that does not parse; carries ``path``, ``line`` and ``column``."""

    def __init__(self, message, path=None, line=None, column=None):
        super(ProtoParseError, self).__init__(message)
        self.path = path
        self.line = line
        self.column = column


class ModelFileError(QcaffeError):
    """A binary model / mean / solverstate file that is missing, truncated or not Caffe's."""


class UpgradeError(QcaffeError):
    """An old (V0/V1) net or solver that cannot be upgraded."""
