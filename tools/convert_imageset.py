#!/usr/bin/env python3
"""Caffe's convert_imageset, as 'qcaffe convert_imageset' (see qcaffe/tools/convert_imageset.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.convert_imageset import main  # noqa: E402
sys.exit(main())
