"""Mutation testing with mutmut 3, one module at a time, and the per-module table of its results.

    python tools/mutate.py                     # every module in setup.cfg's [mutmut] only_mutate
    python tools/mutate.py cbir/metrics.py     # only these modules
    python tools/mutate.py --table             # the table of what mutants/ holds, nothing run
    mutmut results; mutmut show NAME           # mutmut's own view of a run: survivors, their diffs

mutmut reads its settings from setup.cfg's [mutmut] section: which modules it mutates, which test
files it may run (the fast ones: `-m "not slow"`), and what it copies beside them. It mutates a
copy of the code in `mutants/` (never the working tree), records which tests call each function,
and runs only those tests against each mutant of that function. This wrapper adds what mutmut
does not: one worker by default (the machine is shared), module by module in a fixed order, and
the Markdown table that docs/mutations.md reports. Equivalent mutants are marked in the code with
`# pragma: no mutate` and a reason; mutmut then does not make them, so they are in no count.

A module's score is (killed + timed out + crashed) / mutants: a mutant that makes a test hang, or
crash the test process, is caught.
A mutant "without tests" sits in a function that none of the selected tests calls.
"""

from __future__ import annotations

import argparse
import configparser
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = REPO / "mutants"

# mutmut's exit codes for a mutant (mutmut/stats.py), reduced to the columns of the table.
KILLED_CODES = {1, 3}
SURVIVED_CODES = {0}
TIMEOUT_CODES = {36, -24, 24, 152, 255}
# A test process killed by a signal (abort, segmentation fault): the mutant crashed the tests.
CRASH_CODES = {-6, -9, -11}
NO_TESTS_CODES = {5, 33}


@dataclass(frozen=True)
class ModuleResult:
    module: str
    mutants: int
    killed: int
    survived: int
    timed_out: int
    crashed: int
    no_tests: int
    not_checked: int

    @property
    def score(self) -> float | None:
        return (self.killed + self.timed_out + self.crashed) / self.mutants if self.mutants else None


def configured_modules() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return [line.strip() for line in config.get("mutmut", "only_mutate").splitlines() if line.strip()]


def mutant_pattern(module: str) -> str:
    """mutmut names a mutant `package.module.x_function__mutmut_N`: every mutant of a module."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def module_result(module: str) -> ModuleResult:
    meta = MUTANTS / f"{module}.meta"
    if not meta.exists():
        return ModuleResult(module, 0, 0, 0, 0, 0, 0, 0)
    data = json.loads(meta.read_text())
    codes = Counter(data["exit_code_by_key"].values())
    known = KILLED_CODES | SURVIVED_CODES | TIMEOUT_CODES | CRASH_CODES | NO_TESTS_CODES
    return ModuleResult(
        module=module,
        mutants=sum(codes.values()),
        killed=sum(codes[c] for c in KILLED_CODES),
        survived=sum(codes[c] for c in SURVIVED_CODES),
        timed_out=sum(codes[c] for c in TIMEOUT_CODES),
        crashed=sum(codes[c] for c in CRASH_CODES),
        no_tests=sum(codes[c] for c in NO_TESTS_CODES),
        not_checked=sum(n for code, n in codes.items() if code not in known),
    )


def table(results: list[ModuleResult]) -> str:
    lines = [
        "| module | mutants | killed | survived | timed out | crashed | without tests | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if not r.mutants:
            lines.append(f"| `{r.module}` | not yet run | | | | | | |")
            continue
        unchecked = f" ({r.not_checked} not checked)" if r.not_checked else ""
        lines.append(
            f"| `{r.module}` | {r.mutants}{unchecked} | {r.killed} | {r.survived} | {r.timed_out} | "
            f"{r.crashed} | {r.no_tests} | {r.score:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: setup.cfg's only_mutate)")
    parser.add_argument("--table", action="store_true", help="print the table of the last run; run nothing")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    args = parser.parse_args(argv)
    modules = args.modules or configured_modules()
    if not args.table:
        for module in modules:
            started = time.monotonic()
            command = ["mutmut", "run", "--max-children", str(args.max_children), mutant_pattern(module)]
            print(f"$ {' '.join(command)}", flush=True)
            finished = subprocess.run(command, cwd=REPO, check=False)
            print(f"{module}: {time.monotonic() - started:.0f} s", flush=True)
            if finished.returncode != 0:
                print(f"mutmut stopped (exit {finished.returncode}); the modules after {module} were not run")
                break
    print(table([module_result(module) for module in modules]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
