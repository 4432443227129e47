"""``python -m tpunlearn``: the same command line as ``tpunlearn``."""
import sys

from tpunlearn.cli import main

sys.exit(main())
