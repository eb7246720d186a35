#!/usr/bin/env python3
"""Caffe's upgrade_net_proto_binary, as 'qcaffe upgrade_net_proto_binary' (see qcaffe/tools/upgrade_net_proto.py)."""
import os
import sys

# a checkout used without 'pip install -e .' still finds qcaffe
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qcaffe.tools.upgrade_net_proto import main  # noqa: E402
sys.exit(main(prog='upgrade_net_proto_binary', command='upgrade_net_proto_binary'))
