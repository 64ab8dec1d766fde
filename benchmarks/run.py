"""``python -m benchmarks.run [CONFIG ...] [--json FILE]``: see ``scirs2-optim bench --help``."""

import sys

from scirs2_optim_jax.bench.commands import main

if __name__ == "__main__":
    sys.exit(main())
