"""Model-file I/O (prototxt, caffemodel, binaryproto, HDF5) and the upgrade chain."""
