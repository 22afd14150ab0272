"""The web page: crop a region of a photo, pick a backbone, a distance and k, see ranked results;
a second tab shows the measured mAP tables. The same as `cbir serve`.

    python app.py                                  # Oxford5k + Xception (built on first start)
    python app.py --images ~/photos --weights none # your own folder, no download (untrained!)
    python app.py --bundle oxford5k.tar            # a bundle someone built: no images, no build

The options are cbir.cli's; starting the page is cbir_ui.server's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cbir import cli

PROG = "python app.py"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options by ServeOptions' field names (the command line's own, such as -v, left out; one
    not given is left out too, for ServeOptions' default)."""
    arguments = cli.parse(argv, command="serve", prog=PROG)
    return argparse.Namespace(**{name: value for name, value in vars(arguments).items() if name not in cli.CLI_ONLY})


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, command="serve", prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
