"""A mutation run anyone can repeat: change one important line, run the tests that guard it.

    python tools/mutate.py                 # every mutation below; report in docs/mutations.md
    python tools/mutate.py --only 206      # the mutations whose name contains "206"
    python tools/mutate.py --list          # what would run

Each mutation names the exact text it replaces (which must occur exactly once in its module, so
the list cannot silently go stale as the code changes), the text it puts there, and the tests that
should notice. A mutation is *killed* when those tests fail and *survives* when they pass. The
source file is always restored, also on Ctrl-C. Takes a few minutes (mostly the fast tests; a few
mutations need a test that builds a small network).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "mutations.md"

METRICS_TESTS = ("tests/test_metrics.py", "tests/test_evaluate.py::test_evaluation_reproduces_hand_worked_map_in_both_query_modes")
STORE_TESTS = ("tests/test_index.py", "tests/test_search.py", "tests/test_layout.py")
EVALUATE_TESTS = ("tests/test_evaluate.py::test_evaluation_reproduces_hand_worked_map_in_both_query_modes",)


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str
    original: str
    mutant: str
    tests: tuple[str, ...]
    # Why the mutation survives, when it is known to be equivalent (the code behaves the same).
    survives_because: str = ""


MUTATIONS = [
    # cbir/metrics.py
    Mutation("junk counted in AP", "cbir/metrics.py",
             "return [image_id for image_id in ranking if image_id not in junk]",
             "return list(ranking)", METRICS_TESTS),
    Mutation("Oxford AP starts from precision 0", "cbir/metrics.py",
             "old_precision = np.concatenate(([1.0], precision[:-1]))",
             "old_precision = np.concatenate(([0.0], precision[:-1]))", METRICS_TESTS),
    Mutation("Oxford AP as a step, not a trapezoid", "cbir/metrics.py",
             "return float(np.sum((recall - old_recall) * (old_precision + precision) / 2))",
             "return float(np.sum((recall - old_recall) * precision))", METRICS_TESTS),
    Mutation("AP divides by positives found, not all positives", "cbir/metrics.py",
             "return float(precision_at_hits.sum() / len(positives))",
             "return float(precision_at_hits.sum() / max(len(hit_ranks), 1))", METRICS_TESTS),
    Mutation("P@k divides by the ranked count", "cbir/metrics.py",
             "return int(_hit_flags(top_k, positives).sum()) / k",
             "return int(_hit_flags(top_k, positives).sum()) / max(len(top_k), 1)", METRICS_TESTS),
    Mutation("11-point levels reached one rank late", "cbir/metrics.py",
             'RECALL_LEVEL_TENTHS * n_relevant, side="left")',
             'RECALL_LEVEL_TENTHS * n_relevant, side="right")', METRICS_TESTS),
    Mutation("study measure keeps 2G results", "cbir/metrics.py",
             "hits = _hit_flags(ranking[:n_positives], positives)",
             "hits = _hit_flags(ranking[: 2 * n_positives], positives)", METRICS_TESTS),
    Mutation("queries without positives not counted", "cbir/metrics.py",
             "n_skipped=len(scores) - len(scored),", "n_skipped=0,", METRICS_TESTS),
    Mutation("repeated ids accepted", "cbir/metrics.py",
             "if len(set(ranking)) != len(ranking):", "if False:", METRICS_TESTS),
    # cbir/protocols.py, cbir/evaluation/loop.py
    Mutation("standard protocol without ok", "cbir/protocols.py",
             'positive={"good", "ok"},', 'positive={"good"},', EVALUATE_TESTS),
    Mutation("evaluation ignores nothing", "cbir/evaluation/loop.py",
             "positives, ignored = protocol.positives(query), protocol.ignored_ids(query)",
             "positives, ignored = protocol.positives(query), frozenset()", EVALUATE_TESTS),
    Mutation("full queries still cropped", "cbir/evaluation/loop.py",
             "box=query.box if mode is QueryMode.CROPPED else None,", "box=query.box,", EVALUATE_TESTS),
    # cbir/distances.py, cbir/stores/, cbir/index.py, cbir/ranking.py
    Mutation("cosine distance as 1 - cos (other units)", "cbir/distances.py",
             "return np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))", "return 1.0 - cosine", STORE_TESTS),
    Mutation("euclidean distance without |q|^2", "cbir/distances.py",
             "return np.sqrt(np.maximum(norms - 2.0 * products + float(query @ query), 0.0))",
             "return np.sqrt(np.maximum(norms - 2.0 * products, 0.0))", STORE_TESTS),
    Mutation("ties broken against row order", "cbir/distances.py",
             "order = np.lexsort((rows, distances))", "order = np.lexsort((-rows, distances))", STORE_TESTS),
    Mutation("top-k returns k - 1", "cbir/distances.py",
             "candidates = np.argpartition(distances, k - 1)[:k]",
             "candidates = np.argpartition(distances, k - 1)[: k - 1]", STORE_TESTS),
    Mutation("cosine forest built as euclidean", "cbir/stores/annoy.py",
             'Metric.COSINE: "angular"', 'Metric.COSINE: "euclidean"', STORE_TESTS),
    Mutation("Annoy ignores the candidates asked for", "cbir/stores/annoy.py",
             "pool = max(k, candidates or DEFAULT_CANDIDATES)", "pool = k", STORE_TESTS),
    Mutation("Annoy ties broken by its own order", "cbir/stores/annoy.py",
             "return nearest(np.asarray(distances, dtype=np.float32), k, np.asarray(rows, dtype=np.int64))",
             "return Neighbours(np.asarray(rows, dtype=np.int64)[:k], np.asarray(distances, dtype=np.float32)[:k])",
             STORE_TESTS,
             survives_because="equivalent for Annoy 1.17: it sorts its candidates by (distance, item id) "
             "itself (`partial_sort` over pairs in annoylib.h), so its order already breaks ties by row. "
             "`nearest` keeps that promise for every store, whatever its own order."),
    Mutation("Annoy item count unchecked", "cbir/stores/annoy.py",
             "if index.get_n_items() != len(self.descriptors):", "if False:", STORE_TESTS),
    Mutation("file sizes in the manifest unchecked", "cbir/index.py",
             "elif name in manifest.files and path.stat().st_size != manifest.files[name]:", "elif False:",
             STORE_TESTS),
    Mutation("unknown schema versions read", "cbir/index.py",
             "if version not in READABLE_SCHEMAS:", "if False:", STORE_TESTS),
    Mutation("an index of another backbone accepted", "cbir/index.py",
             "if expected is not None and manifest.recipe.backbone != expected.backbone:", "if False:",
             STORE_TESTS),
    Mutation("a killed write leaves its temporary folder", "cbir/atomic.py",
             "        shutil.rmtree(temporary, ignore_errors=True)\n        raise",
             "        raise", STORE_TESTS),
    Mutation("small collections through the store", "cbir/ranking.py",
             "return len(index) * index.manifest.dim <= EXACT_SEARCH_LIMIT",
             "return len(index) * index.manifest.dim > EXACT_SEARCH_LIMIT", STORE_TESTS),
    # cbir/search.py
    Mutation("always rank with cosine", "cbir/search.py",
             "ranking = self.rank(loaded, query, metric, k, exact=exact, rerankers=rerankers)",
             "ranking = self.rank(loaded, query, Metric.COSINE, k, exact=exact, rerankers=rerankers)",
             ("tests/test_search.py",)),
    Mutation("similarity in the chosen metric", "cbir/search.py",
             "exact_distances(loaded.descriptors[rows], query, Metric.COSINE)",
             "exact_distances(loaded.descriptors[rows], query, metric)", ("tests/test_search.py",)),
    Mutation("hits not under the collection's images folder", "cbir/search.py",
             "Hit(position, images[row], record.root / images[row],",
             "Hit(position, images[row], Path(images[row]),", ("tests/test_layout.py",)),
    Mutation("query box ignored", "cbir/search.py",
             'picture = crop_box(picture, box, limits=self.limits, name=name or "the image")',
             'picture = crop_box(picture, None, limits=self.limits, name=name or "the image")',
             ("tests/test_build.py::test_box_query_crops_before_describing",)),
    # cbir/extract.py
    Mutation("checkpoints of another recipe resumed", "cbir/extract.py",
             "if recorded != self.identity:", "if recorded is None:", ("tests/test_extract.py",)),
    Mutation("replaced images resumed", "cbir/extract.py", "            if changed:", "            if False:",
             ("tests/test_extract.py",)),
    Mutation("chunks of another image list resumed", "cbir/extract.py",
             "            if chunk.inputs != expected:\n                break",
             "            if False:\n                break", ("tests/test_extract.py",)),
    Mutation("unreadable images not listed", "cbir/extract.py",
             "chunk.skipped.append(Skipped(relpath, result))", "pass", ("tests/test_extract.py",)),
    Mutation("padding rows kept", "cbir/extract.py",
             "return extractor.describe(batch)[: len(pixels)]", "return extractor.describe(batch)",
             ("tests/test_extract.py",)),
    # cbir/download.py
    Mutation("206 from another byte accepted", "cbir/download.py", "if start != offset:", "if False:",
             ("tests/test_datasets.py",)),
    Mutation("resume written with wb", "cbir/download.py", 'mode = "ab"', 'mode = "wb"', ("tests/test_datasets.py",)),
    Mutation("short body accepted as complete", "cbir/download.py", "    elif written < total:", "    elif False:",
             ("tests/test_datasets.py",)),
    Mutation("416 always taken as complete", "cbir/download.py", "return total == offset", "return True",
             ("tests/test_datasets.py",)),
    Mutation("resume offset reset", "cbir/download.py",
             "offset = partial.stat().st_size if partial.exists() else 0", "offset = 0",
             ("tests/test_datasets.py",)),
    # cbir/archives.py
    Mutation("members climbing out accepted", "cbir/archives.py",
             'return normal == ".." or normal.startswith("../")', "return False", ("tests/test_archives.py",)),
    Mutation("absolute members accepted", "cbir/archives.py",
             'return name.startswith(("/", "\\\\")) or bool(PureWindowsPath(name).drive)', "return False",
             ("tests/test_archives.py",)),
    Mutation("writing through a link accepted", "cbir/archives.py",
             "if any(parent in link_names for parent in _parents(normal)):", "if False:",
             ("tests/test_archives.py",)),
    Mutation("links leaving the folder accepted", "cbir/archives.py",
             "if _is_absolute(target) or _climbs_out(posixpath.join(posixpath.dirname(normal), target)):",
             "if False:", ("tests/test_archives.py",)),
    # cbir/images.py: a box on a big photo, decoded at a reduced scale
    Mutation("box not scaled onto the reduced decode", "cbir/images.py",
             "    if scale != 1:\n        box = (box[0] * scale", "    if False:\n        box = (box[0] * scale",
             ("tests/test_images.py::test_a_box_on_a_phone_photo_decodes_only_the_pixels_the_network_reads",)),
    Mutation("reduced scale read from the unturned width", "cbir/images.py",
             "scale = max(picture.size) / longest", "scale = picture.width / width",
             ("tests/test_images.py::test_a_box_on_a_phone_photo_decodes_only_the_pixels_the_network_reads",)),
    # cbir/uploads.py: what a visitor sends
    Mutation("zip member names not checked", "cbir/uploads.py",
             "                _check_member(archive, member)", "                pass",
             ("tests/test_uploads.py::test_a_member_that_would_land_outside_refuses_the_whole_zip",)),
    Mutation("zip member count not bounded", "cbir/uploads.py",
             "if len(members) > limits.max_zip_members:", "if False:",
             ("tests/test_uploads.py::test_ten_thousand_tiny_members_are_refused_before_any_is_written",)),
    Mutation("bytes written not counted", "cbir/uploads.py",
             "            budget.take_bytes(len(chunk), label)", "            pass",
             ("tests/test_uploads.py::test_a_zip_bomb_stops_at_the_byte_limit",)),
    Mutation("an uploaded collection found from any session", "cbir/uploads.py",
             "            return self._sessions.get(self._session(session), {}).get(name)",
             "            return next((c[name] for c in self._sessions.values() if name in c), None)",
             ("tests/test_uploads.py",)),
    Mutation("a closed session's files kept", "cbir/uploads.py",
             "            shutil.rmtree(self.folder(session), ignore_errors=True)", "            pass",
             ("tests/test_uploads.py::test_a_session_sees_only_its_own_collection_and_it_goes_with_the_session",)),
    # cbir/local_features.py, cbir/verification.py (issue 29)
    Mutation("SIFT without the root", "cbir/local_features.py",
             "return np.sqrt(descriptors / np.maximum(totals, 1e-12))", "return descriptors / np.maximum(totals, 1e-12)",
             ("tests/test_local_features.py",)),
    Mutation("the weakest keypoints kept", "cbir/local_features.py",
             "strongest = np.argsort([-point.response", "strongest = np.argsort([point.response",
             ("tests/test_local_features.py",)),
    Mutation("images described at full size", "cbir/local_features.py",
             "        shrink = longer / settings.max_side\n", "        shrink = 1.0\n", ("tests/test_local_features.py",)),
    Mutation("the features file not checked for damage", "cbir/index.py",
             "    local = (LOCAL_FEATURES_FILE,) if manifest.local_features is not None else ()", "    local = ()",
             ("tests/test_local_features.py",)),
    Mutation("a build asking for local features keeps an index without them", "cbir/build.py",
             "    if settings.local_features and manifest.local_features != settings.local_feature_settings:",
             "    if False:", ("tests/test_local_features.py",)),
    Mutation("no ratio test", "cbir/verification.py",
             "    passes = np.maximum(2.0 - 2.0 * best, 0.0) < ratio**2 * np.maximum(2.0 - 2.0 * runner_up, 0.0)",
             "    passes = best > -2", ("tests/test_verification.py",)),
    Mutation("matches not mutual", "cbir/verification.py", "    keep = passes & mutual", "    keep = passes",
             ("tests/test_verification.py",)),
    Mutation("the transform left in described pixels", "cbir/verification.py",
             "    in_pixels = _scaling(result.shrink) @ transform @ np.linalg.inv(_scaling(query.shrink))",
             "    in_pixels = transform", ("tests/test_verification.py",)),
    Mutation("verified rows not ordered by inliers", "cbir/verification.py",
             '        verified = verified[np.argsort(-inliers[verified], kind="stable")]', "",
             ("tests/test_verification.py",)),
]  # fmt: skip


def run_one(mutation: Mutation, timeout: float) -> tuple[str, str, float]:
    """('killed' | 'survived', the first failing test or '', seconds)."""
    path = REPO / mutation.module
    source = path.read_text()
    count = source.count(mutation.original)
    if count != 1:
        raise SystemExit(f"{mutation.name}: the text to mutate occurs {count} times in {mutation.module}; update the list")
    started = time.perf_counter()
    try:
        path.write_text(source.replace(mutation.original, mutation.mutant))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
            cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "killed", f"(the tests hung for {timeout:.0f} s)", time.perf_counter() - started
    finally:
        path.write_text(source)
    seconds = time.perf_counter() - started
    if result.returncode == 0:
        return "survived", "", seconds
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)
    return "killed", failed.group(1) if failed else f"pytest exit {result.returncode}", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the mutations whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutation")
    parser.add_argument("--report", type=Path, default=REPORT, help="where to write the table (Markdown)")
    arguments = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not arguments.only or arguments.only.lower() in m.name.lower()]
    if arguments.list:
        for mutation in chosen:
            print(f"{mutation.module:<22} {mutation.name}")
        return 0
    rows = []
    for mutation in chosen:
        outcome, by, seconds = run_one(mutation, arguments.timeout)
        rows.append((mutation, outcome, by, seconds))
        print(f"{outcome:<9} {seconds:6.1f} s  {mutation.module:<22} {mutation.name}  {by}", flush=True)
    survived = [row for row in rows if row[1] == "survived"]
    unexplained = [row for row in survived if not row[0].survives_because]
    if not arguments.only:
        write_report(arguments.report, rows)
    print(f"{len(rows) - len(survived)} killed, {len(survived)} survived ({len(unexplained)} unexplained)")
    return 1 if unexplained else 0


# What earlier runs found and what changed because of them (kept in the report).
FINDINGS = [
    "The five mutations the test suite let through before (always cosine, full queries cropped, "
    "checkpoint identity ignored, a 206 from another byte, `_climbs_out` always false) are rows here, "
    "each killed by a test written for it.",
    "Annoy's candidates were re-ranked with exact distances; removing that changed no ranking: Annoy "
    "reports the true float32 distance of every row it returns (`tests/test_index.py` checks within 1e-6). "
    "The re-rank was removed; what buys recall is the number of candidates (a test for that killed "
    "'Annoy ignores the candidates asked for').",
    "'absolute members accepted' made the tests hang: `_parents` looped forever on '/'. Fixed.",
    "Survivors of the first run that got tests: ties broken by row order, chunks of another image list "
    "of the same length, unreadable images listed, padding rows dropped, a .part longer than the file.",
]


def write_report(path: Path, rows) -> None:
    lines = [
        "# Mutation run",
        "",
        "Made by `python tools/mutate.py` (the list of mutations is in that file). Each row changes one",
        "line of the library, runs the tests named for it, and restores the line. *killed*: a test",
        "failed, as it should; the test named is the first that did.",
        "",
        f"{time.strftime('%Y-%m-%d')}: {sum(r[1] == 'killed' for r in rows)} killed, "
        f"{sum(r[1] == 'survived' for r in rows)} survived, of {len(rows)}.",
        "",
        "| module | mutation | outcome | caught by | seconds |",
        "|---|---|---|---|---|",
    ]
    for mutation, outcome, by, seconds in rows:
        caught = f"`{by}`" if by else ""
        lines.append(f"| `{mutation.module}` | {mutation.name} | {outcome} | {caught} | {seconds:.0f} |")
    lines += ["", "## Findings", ""] + [f"- {finding}" for finding in FINDINGS]
    explained = [(m, outcome) for m, outcome, _, _ in rows if outcome == "survived"]
    if explained:
        lines += ["", "## Survivors", ""]
        for mutation, _ in explained:
            lines.append(f"- **{mutation.name}** (`{mutation.module}`): {mutation.survives_because or 'NOT EXPLAINED'}")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
