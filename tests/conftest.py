import os
import sys

# Tests import their helpers (shared_data) by plain name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
