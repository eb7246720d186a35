#!/usr/bin/env python3
"""The DNS/INQ fork's compression_scripts/dns_to_normal.py, as 'qcaffe dns_to_normal' (see qcaffe/tools/compress_convert.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.compress_convert import main  # noqa: E402
sys.exit(main(prog='dns_to_normal.py', command='dns_to_normal'))
