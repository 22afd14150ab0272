"""What keras-hub adds to this project's install, two ways, side by side in one run.

    python bench/install.py            # both ways; about 10 minutes (the full tensorflow wheel is large)
    python bench/install.py --quick    # the optional file only

Each way installs into a throwaway virtual environment made with --system-site-packages on top of
the current interpreter (which holds requirements.txt), so the environment's own site-packages is
exactly what the way adds. pip's cache is off, so the time includes the downloads.

(a) pip's default:   pip install keras-hub==<pinned>    (its declared tensorflow-text pulls tensorflow)
(b) optional file:   pip install --no-deps -r requirements-keras-hub.txt

For each: wall time, megabytes and packages added, which TensorFlow `import tensorflow` then finds,
and whether a DINOv2 backbone builds and runs there (a 1-layer random-init ViT at 56 px). Results go
to bench/results/install.json and install.md.
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

REQUIREMENTS = REPO / "requirements-keras-hub.txt"

PROBE = """
import json, time
import tensorflow as tf
start = time.perf_counter()
import keras_hub
imported = time.perf_counter() - start
import numpy as np
model = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
                                        image_shape=(56, 56, 3))
out = model.predict_on_batch({"images": np.zeros((1, 56, 56, 3), np.float32)})
print(json.dumps({"tensorflow": tf.__version__, "tensorflow_file": tf.__file__, "keras_hub": keras_hub.__version__,
                  "import_seconds": round(imported, 2), "dinov2_output": list(out.shape)}))
"""


def pinned_keras_hub() -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith("keras-hub=="):
            return line.split()[0]
    raise SystemExit(f"no keras-hub pin in {REQUIREMENTS}")


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def measure(name: str, install: list[str], scratch: Path) -> dict:
    venv = scratch / name
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    before = set(freeze(python, venv))
    size_before = megabytes(site_packages(venv))
    start = time.perf_counter()
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-cache-dir", *install], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    added = sorted(set(freeze(python, venv)) - before)
    probe = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    result = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {"error": probe.stderr[-800:]}
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    row = {
        "way": name,
        "command": "pip install " + " ".join(install),
        "seconds": round(seconds, 1),
        "added_mb": round(megabytes(site_packages(venv)) - size_before, 1),
        "packages_added": added,
        "tensorflow_found": result.get("tensorflow_file", "").replace(str(venv), "<venv>"),
        "tensorflow_shadowed": str(venv) in result.get("tensorflow_file", ""),
        "probe": result,
        "pip_check": check.stdout.strip().splitlines()[:6],
    }
    shutil.rmtree(venv, ignore_errors=True)
    return row


def freeze(python: str, venv: Path) -> list[str]:
    """The distributions installed in the environment itself (not the system ones it sees)."""
    listed = subprocess.run([python, "-m", "pip", "freeze", "--path", str(site_packages(venv))],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return [line for line in listed.stdout.splitlines() if line and not line.startswith(("pip==", "setuptools=="))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the optional file only")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="install")
    arguments = parser.parse_args()
    ways = [("optional file", ["--no-deps", "-r", str(REQUIREMENTS)])]
    if not arguments.quick:
        ways.insert(0, ("pip default", [pinned_keras_hub()]))
    with tempfile.TemporaryDirectory(prefix="cbir-install-") as scratch:
        rows = [measure(name, install, Path(scratch)) for name, install in ways]
    for row in rows:
        row["command"] = row["command"].replace(str(REPO) + "/", "")
    report = {"date": datetime.date.today().isoformat(), "python": sys.version.split()[0], "rows": rows}
    table = [
        [row["way"], f"`{row['command']}`", row["seconds"], row["added_mb"], len(row["packages_added"]),
         ", ".join(p.split("==")[0] for p in row["packages_added"]),
         "yes: " + row["tensorflow_found"] if row["tensorflow_shadowed"] else "no (tensorflow-cpu)",
         row["probe"].get("import_seconds", row["probe"].get("error", "")[:80]),
         "runs" if "dinov2_output" in row["probe"] else "fails"]
        for row in rows
    ]  # fmt: skip
    title = (f"What keras-hub adds on top of requirements.txt (`python bench/install.py`, {report['date']}; "
             "pip cache off, so times include downloads; shared machine and network)")  # fmt: skip
    columns = ["way", "command", "install s", "MB added", "packages", "which", "a second TensorFlow shadows tensorflow-cpu",
               "import keras_hub s (after tensorflow)", "DINOv2"]  # fmt: skip
    write_report(arguments.out, arguments.name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
