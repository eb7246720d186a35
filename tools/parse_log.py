#!/usr/bin/env python3
"""Caffe's parse_log, as 'qcaffe parse_log' (see qcaffe/tools/parse_log.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.parse_log import main  # noqa: E402
sys.exit(main())
