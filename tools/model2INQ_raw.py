#!/usr/bin/env python3
"""The DNS/INQ fork's compression_scripts/model2INQ_raw.py, as 'qcaffe model2INQ_raw' (see qcaffe/tools/compress_convert.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.compress_convert import main  # noqa: E402
sys.exit(main(prog='model2INQ_raw.py', command='model2INQ_raw'))
