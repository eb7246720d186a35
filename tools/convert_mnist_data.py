#!/usr/bin/env python3
"""Caffe's convert_mnist_data, as 'qcaffe convert_mnist_data' (see qcaffe/tools/convert_mnist_data.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.convert_mnist_data import main  # noqa: E402
sys.exit(main())
