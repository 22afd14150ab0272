"""`python -m cbir.evaluate`: the same as `cbir evaluate` (cbir.cli); the evaluation itself is
`cbir.evaluation`.

    python -m cbir.evaluate --collection oxford5k --backbones all
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cbir import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, command="evaluate", prog="python -m cbir.evaluate")


if __name__ == "__main__":
    sys.exit(main())
