"""Folder put on sys.path by the opt-in shim; holds the ``caffe`` package (see qcaffe.compat)."""
