"""The data side of qcaffe: Datum/LMDB I/O, the DataTransformer, image decoding, prefetching.

Caffe equivalent: src/caffe/util/db*.cpp, data_transformer.cpp, util/io.cpp (images) and
base_data_layer.cpp (prefetch).  The data *layers* themselves live in qcaffe/layers/data.py.
"""
from .lmdb_io import (DataSourceError, LMDBReader, datum_bytes, datum_to_array,
                      decode_datums, encode_datums, key_for, read_lmdb, write_lmdb)
from .prefetch import PrefetchError, Prefetcher
from .transformer import DataTransformer, TransformError

__all__ = ['DataSourceError', 'LMDBReader', 'datum_bytes', 'datum_to_array', 'decode_datums',
           'encode_datums', 'key_for', 'read_lmdb', 'write_lmdb', 'PrefetchError',
           'Prefetcher', 'DataTransformer', 'TransformError']
