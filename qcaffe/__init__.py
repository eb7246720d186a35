"""qcaffe: Caffe reimplemented in Python (numpy / cupy), with model compression built in."""
__version__ = '0.1.0'
