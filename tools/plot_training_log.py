#!/usr/bin/env python3
"""Caffe's plot_training_log, as 'qcaffe plot_training_log' (see qcaffe/tools/plot_training_log.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.plot_training_log import main  # noqa: E402
sys.exit(main())
