#!/usr/bin/env python3
"""The DNS/INQ fork's compression_scripts/parse_model.py, as 'qcaffe parse_model' (see qcaffe/tools/parse_model.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.parse_model import main  # noqa: E402
sys.exit(main(prog='parse_model.py'))
