"""``python -m qcaffe <command> [flags]`` (same as the ``qcaffe`` console script)."""
import sys

from .cli import main

sys.exit(main())
