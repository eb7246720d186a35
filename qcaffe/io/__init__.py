"""Model-file I/O: prototxt, binary protobuf, HDF5, mean files, the upgrade chain.

Caffe: src/caffe/util/io.cpp, upgrade_proto.cpp, hdf5.cpp and the file side of
Net::CopyTrainedLayersFrom / Solver snapshots. Only re-exports live here.

It is also pycaffe's ``caffe.io`` (``import qcaffe as caffe; caffe.io.Transformer``): the
pycaffe functions live in :mod:`qcaffe.pycaffe_io` and are re-exported below.
"""
from .binary import (read_binary_proto, read_mean_binaryproto, read_net_param,
                     read_solver_param, write_binary_proto)
from .blobproto import (array_to_blobproto, blob_shape_from_proto, blobproto_to_array,
                        legacy_shape_equals, shape_equals, shape_string)
from .errors import (BlobProtoError, ModelFileError, ModelFileNotFoundError, ProtoParseError,
                     QcaffeError, UpgradeError)
from .hdf5 import (read_hdf5_solver_state, read_hdf5_weights, write_hdf5_solver_state,
                   write_hdf5_weights)
from .prototxt import parse_prototxt_text, read_prototxt, write_prototxt
from .solverstate import read_solver_state, write_solver_state
from .upgrade import net_needs_upgrade, upgrade_net_as_needed, upgrade_solver_as_needed
from .weights import WeightBlob, load_weights_file
# pycaffe's caffe.io (blobproto_to_array / array_to_blobproto are the ones above)
from ..pycaffe_io import (Transformer, array_to_datum, arraylist_to_blobproto_vector,
                          arraylist_to_blobprotovector_str, blobprotovector_str_to_arraylist,
                          datum_to_array, load_image, oversample, resize_image)
