#!/usr/bin/env python3
"""The DNS/INQ fork's compression_scripts/inq_to_normal.py, as 'qcaffe inq_to_normal' (see qcaffe/tools/compress_convert.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.compress_convert import main  # noqa: E402
sys.exit(main(prog='inq_to_normal.py', command='inq_to_normal'))
