#!/usr/bin/env python3
"""Caffe's compute_image_mean, as 'qcaffe compute_image_mean' (see qcaffe/tools/compute_image_mean.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.compute_image_mean import main  # noqa: E402
sys.exit(main())
