"""What a Space (or a new user) installs: requirements.txt alone in a fresh virtual environment.

    python bench/space_install.py                      # a throwaway environment, removed afterwards
    python bench/space_install.py --keep /tmp/venv-min # keep it (to run the default suite there)

The environment is made without system site-packages and pip's cache is off, so the time includes the
downloads (and Annoy's compilation: it ships no wheel) and the size is everything requirements.txt
brings. It also reports what requirements-dev.txt adds on top (Playwright and its dependencies), read
from the distributions installed in the interpreter running this script, which holds that file.
Results go to bench/results/space_install.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_report  # noqa: E402

# Run inside an environment: each installed distribution's name, version and size on disk in MB.
SIZES = """
import json, importlib.metadata as md
rows = []
for dist in md.distributions():
    total = 0
    for file in dist.files or []:
        try:
            total += dist.locate_file(file).stat().st_size
        except OSError:
            pass
    rows.append([dist.metadata["Name"], dist.version, round(total / 1e6, 1)])
print(json.dumps(rows))
"""


def distribution_sizes(python: str) -> dict[str, tuple[str, float]]:
    listed = subprocess.run([python, "-c", SIZES], capture_output=True, text=True, check=True)
    return {name.lower().replace("_", "-"): (version, size) for name, version, size in json.loads(listed.stdout)}


def dev_requirements() -> list[str]:
    """The distributions requirements-dev.txt names beyond its `-r requirements.txt`."""
    lines = (REPO / "requirements-dev.txt").read_text().splitlines()
    return [line.split("==")[0].strip().lower() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


def test_tools() -> list[str]:
    """The distributions under requirements.txt's "# Tests" heading (kept there so the suite runs on it alone)."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Tests"))
    return [line.split("==")[0].strip().lower().replace("_", "-") for line in lines[start:]
            if line.strip() and not line.startswith("#")]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="make the environment here and keep it")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="space_install")
    arguments = parser.parse_args()
    scratch = None
    if arguments.keep:
        venv = arguments.keep
    else:
        scratch = tempfile.mkdtemp(prefix="cbir-space-install-")
        venv = Path(scratch) / "venv"
    subprocess.run(["python3", "-m", "venv", "--clear", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    base = distribution_sizes(python)
    start = time.perf_counter()
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-cache-dir", "-r", str(REPO / "requirements.txt")],
                   check=True)  # fmt: skip
    seconds = time.perf_counter() - start
    installed = {name: row for name, row in distribution_sizes(python).items() if name not in base}
    largest = sorted(installed.items(), key=lambda item: -item[1][1])[:8]
    # What requirements-dev.txt adds: its own lines and their dependencies that requirements.txt lacks.
    here = distribution_sizes(sys.executable)
    added = {}
    for name in dev_requirements():
        wanted = [name]
        while wanted:
            current = wanted.pop()
            if current in added or current in installed or current not in here:
                continue
            added[current] = here[current]
            requires = subprocess.run([sys.executable, "-m", "pip", "show", current], capture_output=True, text=True).stdout
            for line in requires.splitlines():
                if line.startswith("Requires:"):
                    wanted += [part.strip().lower().replace("_", "-") for part in line[9:].split(",") if part.strip()]
    tools = {name: installed[name] for name in test_tools() if name in installed}
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    total = round(sum(size for _, size in installed.values()), 1)
    report = {
        "date": datetime.date.today().isoformat(),
        "python": subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout.split()[-1],
        "requirements_txt": {"seconds": round(seconds, 1), "mb": total, "distributions": len(installed),
                             "largest": [[name, version, size] for name, (version, size) in largest]},
        "test_tools_in_requirements_txt": {name: {"version": version, "mb": size} for name, (version, size) in tools.items()},
        "requirements_dev_adds": {name: {"version": version, "mb": size} for name, (version, size) in added.items()},
    }  # fmt: skip
    table = [["requirements.txt, fresh venv", "`pip install --no-cache-dir -r requirements.txt`", report["requirements_txt"]["seconds"],
              total, len(installed), ", ".join(f"{name} {size}" for name, (_, size) in largest)]]  # fmt: skip
    table.append(["of which the test tools (kept: the suite runs on this file)", "the `# Tests` lines of requirements.txt", "",
                  round(sum(size for _, size in tools.values()), 1), len(tools),
                  ", ".join(f"{name} {size}" for name, (_, size) in tools.items())])  # fmt: skip
    table.append(["requirements-dev.txt adds", "`pip install -r requirements-dev.txt`", "",
                  round(sum(size for _, size in added.values()), 1), len(added),
                  ", ".join(f"{name} {size}" for name, (_, size) in added.items())])  # fmt: skip
    title = (f"What requirements.txt installs (a Space's install) and what requirements-dev.txt adds "
             f"(`python bench/space_install.py`, {report['date']}, Python {report['python']}; pip cache off, so the "
             "time includes downloads and Annoy's compilation; shared machine and network)")  # fmt: skip
    columns = ["what", "command", "install s", "MB", "distributions", "largest (MB)"]
    write_report(arguments.out, arguments.name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
