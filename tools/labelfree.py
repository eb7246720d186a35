#!/usr/bin/env python3
"""Label-free compression, as 'qcaffe labelfree' (see qcaffe/tools/labelfree.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.labelfree import main  # noqa: E402
sys.exit(main())
