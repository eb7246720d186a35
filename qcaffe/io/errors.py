"""Exceptions raised to users of qcaffe.

Caffe reports every one of these situations with a glog ``CHECK`` / ``LOG(FATAL)`` that
aborts the process. A Python library must not abort its caller, so each fatal path raises
a subclass of :class:`QcaffeError` instead. The message of every error must be enough on
its own: it names the file (and layer, line, column... where known), says what was found
and what was expected.
"""


class QcaffeError(Exception):
    """Base class of all user-facing qcaffe errors (Caffe: a fatal ``CHECK`` failure)."""


class LayerError(QcaffeError):
    """A layer definition that cannot work (wrong blob counts, bad parameter values...)."""


class ModelFileError(QcaffeError):
    """A model, weights, solver, solver-state or mean file cannot be read or written.

    Caffe: ``CHECK(ReadProtoFromBinaryFile(...))``, ``H5Fopen`` checks and friends.
    """


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The named file does not exist.

    Also a :class:`FileNotFoundError`, so ``except OSError`` in user code keeps working.
    """


class ProtoParseError(ModelFileError):
    """A text-format (prototxt) file does not parse (Caffe: ``TextFormat::Parse`` fails).

    ``path``, ``line`` and ``column`` (1-based, a tab counts as one column) locate the
    problem; ``line`` and ``column`` are ``None`` when protobuf gave no position.
    """

    def __init__(self, message, path=None, line=None, column=None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.column = column


class UpgradeError(QcaffeError):
    """A deprecated net or solver definition cannot be upgraded to the current format.

    Caffe: the ``LOG(FATAL)`` paths of ``src/caffe/util/upgrade_proto.cpp``.
    """


class BlobProtoError(QcaffeError, ValueError):
    """A BlobProto's values do not fit its shape (Caffe: ``CHECK_EQ(count_, proto.data_size())``).

    Also a :class:`ValueError`, which is what pycaffe's ``blobproto_to_array`` raises (through
    numpy's reshape) and what its test suite expects.
    """
