"""The design card's build script: `cbir build` with the same options (and, given --add NEW_DIR,
`cbir add`: `python build_index.py --images DIR --name NAME --add NEW_DIR`).

    python build_index.py --dataset oxford5k --backbones xception
    python build_index.py --images ~/photos --name holiday --backbones all --weights none
    python build_index.py --dataset oxford5k --pooling gem --scales 1,0.707,0.5 --whiten-on paris6k --dim 512

The options are cbir.cli's; the work is done by `cbir`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cbir import cli

PROG = "python build_index.py"


def command(argv: Sequence[str]) -> str:
    """`cbir add` when the images of NEW_DIR are to be added (--add NEW_DIR), else `cbir build`."""
    return "add" if any(arg == "--add" or arg.startswith("--add=") for arg in argv) else "build"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.parse(argv, command=command(argv), prog=PROG)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.main(argv, command=command(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
