"""python -m qwen3guard.tiny build DIR [--seed N]"""

import sys

from ..cli import main

sys.exit(main(["tiny", *sys.argv[1:]]))
