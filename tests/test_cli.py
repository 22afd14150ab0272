"""The command line (cbir.cli): every command the documentation and the program's own messages name
parses with the real parser; help texts are whole; options reach the library's settings by field
name; a store registered in a test is offered by `cbir build --store`. Fast: nothing here runs a
command, except the slow tests at the end."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import build_index
from cbir import cli, commands, stores
from cbir.backbones import BACKBONES
from cbir.build import BuildSettings
from cbir.datasets.registry import DATASETS
from cbir.extract import Executor
from cbir.layout import build_command
from cbir.pooling import Pooling
from cbir.recipe import RecipeSettings
from cbir.runtime import Runtime
from cbir.stores.annoy import DEFAULT_N_TREES
from cbir_ui.formatting import evaluate_command
from tests.stubs import TOY_STORE

REPO = Path(__file__).resolve().parents[1]
# A command as the documentation and the messages write it: the program, then its options.
PROGRAM = re.compile(
    r"(?:python3? build_index\.py|python3? app\.py|python3? -m cbir\.evaluate|cbir (?:build|add|evaluate|export|serve|list)\b)"
)
# cbir_ui.server.ServeOptions' fields (docs: /work/plan/DECISIONS.md, "Wave 2"): what `cbir serve` fills.
SERVE_FIELDS = {"host", "port", "share", "index_dir", "data_dir", "mirror", "images", "name", "no_build", "bundle",
                "cache_dir", "weights", "backbones", "input_size", "uploads", "keep_uploads", "queue_size"}  # fmt: skip


def parse_command(line: str) -> argparse.Namespace:
    """Parse one command line (the program included) with the parser of the program it names, as
    that program would; SystemExit(2) when it would refuse it. A placeholder such as <name> after an
    option with choices stands for one of them. A flag named last without its value is a reference
    to the flag (`cbir build --store`): the flag must exist."""
    words = shlex.split(line, comments=True)
    if words[0].startswith("python"):
        program = " ".join(words[:3] if words[1] == "-m" else words[:2])
        argv = words[3:] if words[1] == "-m" else words[2:]
    else:
        program, argv = f"cbir {words[1]}", words[2:]
    parser = program_parser(program, argv)
    choices = {option: action.choices for action in parser._actions for option in action.option_strings if action.choices}
    argv = [list(choices[before])[0] if word.startswith("<") and before in choices else word
            for before, word in zip(["", *argv], argv)]  # fmt: skip

    def parse(argv: list[str]) -> argparse.Namespace:
        arguments = parser.parse_args(argv)
        if arguments.check:
            arguments.check(arguments)
        return arguments

    try:
        return parse(argv)
    except SystemExit as refused:
        if refused.code == 0:  # --help
            return argparse.Namespace()
        if argv and argv[-1].startswith("--") and takes_flag(program, argv[-1]):
            return parse(argv[:-1])  # the reference to a flag: it exists, and what is before it parses
        raise


def program_parser(program: str, argv: list[str]) -> argparse.ArgumentParser:
    """The parser `program` (python build_index.py, python app.py, cbir build...) uses for `argv`."""
    if program.endswith("build_index.py"):
        return cli.command_parser(build_index.command(argv), build_index.PROG)
    command = {"python app.py": "serve", "python -m cbir.evaluate": "evaluate"}.get(program, program[len("cbir "):])
    return cli.command_parser(command, program)


def takes_flag(program: str, flag: str) -> bool:
    return flag in program_parser(program, [flag])._option_string_actions


def commands_in(text: str) -> list[str]:
    """Every command line in a text: in a code block (continued lines joined) or in `backticks`. A
    subcommand named alone in prose ("cbir export writes ...") is a reference to it, not a command."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        for match in re.finditer(PROGRAM.pattern + r"[^`\n]*", line):
            # Prose lists the subcommands as "cbir build | add | ...": the first one is a command.
            command = re.split(r" \| | && | or | \(|  ", match.group(0))[0].strip().rstrip(".,;:)")
            try:
                words = shlex.split(command, comments=True)
            except ValueError:  # an apostrophe in the prose after it ("the folder's name")
                command = command[: max(command.rfind("'"), command.rfind('"'))].strip()
                words = shlex.split(command, comments=True)
            if command.startswith("cbir") and len(words) == 2 or len(words) > 2 and not words[2].startswith("-"):
                continue
            found.append(command)
    return found


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_COMMANDS = [(path.relative_to(REPO).as_posix(), line) for path in DOCS for line in commands_in(path.read_text())]


def test_the_documentation_names_commands():
    assert len(DOC_COMMANDS) > 30  # the extraction works: README and docs/ show dozens


@pytest.mark.parametrize("where,line", DOC_COMMANDS, ids=[f"{where}:{line[:60]}" for where, line in DOC_COMMANDS])
def test_every_command_in_the_documentation_parses(where, line):
    parse_command(line)


def test_a_flag_that_does_not_exist_is_refused():
    """The check above can fail: a misspelt flag, a choice that is not one, a mode given twice."""
    for line in ("python build_index.py --dataset oxford5k --n-treez 5", "cbir build --pooling avg",
                 "python build_index.py --dataset oxford5k --images x", "python app.py --images x --bundle y.tar",
                 "cbir add --images x", "python -m cbir.evaluate --modes cropped,sideways"):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_command(line)


# ----------------------------------------------------------------------------- the messages' commands


def message_strings() -> list[tuple[str, str]]:
    """Every string literal of the program's own modules (f-strings with their fields as '{}'), with
    where it is: the messages a user reads."""
    strings = []
    sources = [REPO / "app.py", REPO / "build_index.py", *sorted((REPO / "cbir").rglob("*.py")),
               *sorted((REPO / "cbir_ui").glob("*.py"))]  # fmt: skip
    for path in sources:
        tree = ast.parse(path.read_text())
        in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
        in_fstrings |= {id(node.body[0].value) for node in ast.walk(tree)  # docstrings are not messages
                        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstrings:
                text = node.value
            else:
                continue
            strings.append((f"{path.relative_to(REPO)}:{node.lineno}", text))
    return strings


MESSAGES = [(where, text) for where, text in message_strings() if PROGRAM.search(text)]


def test_the_messages_name_commands():
    assert len(MESSAGES) > 10


@pytest.mark.parametrize("where,text", MESSAGES, ids=[where for where, _ in MESSAGES])
def test_every_command_a_message_suggests_parses(where, text):
    """Each whole command in a message parses (a field filled in at run time: checked below through
    the function that makes it); a message that names one program and a flag (`pass --mirror URL`)
    names a flag that program takes."""
    for line in commands_in(text):
        if "{}" not in line:
            parse_command(line)
    programs = {match.group(0) for match in PROGRAM.finditer(text)}
    if len(programs) == 1:
        program = programs.pop()
        for flag in set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text)):
            assert takes_flag(program, flag), f"{where}: {program} has no {flag}"


def test_the_first_start_suggests_a_mirror_that_app_py_takes():
    """Issue 31: `python app.py` with no data says "(or pass --mirror URL)"; app.py took only CBIR_MIRROR."""
    assert parse_command("python app.py --mirror https://example.org/oxbuild").mirror == "https://example.org/oxbuild"


RECIPE_KEYS = ["xception", "vgg16-mac", "xception-gem-ms1_0.707_0.5", "resnet152_v2-rmac-wfull-paris6k",
               "vgg16-gem-dba10-w256-paris6k", "xception-ovf32", "dinov2_small-gem"]  # fmt: skip


@pytest.mark.parametrize("collection", [*DATASETS, "roxford5k+r1m", "holiday"])
@pytest.mark.parametrize("key", [None, *RECIPE_KEYS])
def test_the_build_commands_messages_suggest_parse_and_make_that_recipe(collection, key):
    for images in (None, "/photos/my holiday"):
        line = build_command(collection, key, force=True, images=images)
        arguments = parse_command(line.replace("<folder>", "/photos"))
        if key:
            recipe = BuildSettings(recipe=commands.recipe_settings(arguments)).recipe_for(BACKBONES[arguments.backbones])
            assert recipe.key == key


@pytest.mark.parametrize("collection", ["oxford5k", "holiday"])
def test_the_pages_evaluate_command_parses(collection):
    assert parse_command(evaluate_command(collection)).collection == collection


# ----------------------------------------------------------------------------- help texts


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.make_parser()
    choices = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices
    shells = {"python build_index.py": cli.command_parser("build", "python build_index.py"),
              "python app.py": cli.command_parser("serve", "python app.py")}  # fmt: skip
    return {"cbir": parser, **{f"cbir {name}": sub for name, sub in choices.items()}, **shells}


@pytest.mark.parametrize("name", list(subparsers()))
def test_every_option_has_help_and_says_its_default_once(name):
    parser = subparsers()[name]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
    for line in parser.format_help().splitlines():
        assert line.lower().count("default") <= 1, f"{name}: {line!r}"
    for unset in ("(default: None)", "(default: False)", "(default: True)"):
        assert unset not in parser.format_help()


def test_help_shows_the_library_defaults():
    text = " ".join(subparsers()["cbir build"].format_help().split())
    assert f"(default: {DEFAULT_N_TREES})" in text
    assert f"(default: {stores.DEFAULT_STORE})" in text


# ----------------------------------------------------------------------------- options by field name


def test_the_recipe_options_reach_recipe_settings_by_field():
    arguments = cli.parse(["build", "--images", "/photos", "--pooling", "gem", "--scales", "1,0.5", "--whiten-on",
                           "paris6k", "--dim", "256", "--dba", "10", "--runtime", "openvino-f32", "--input-size", "96",
                           "--weights", "none"])  # fmt: skip
    recipe = commands.recipe_settings(arguments)
    assert (recipe.pooling, recipe.scales, recipe.whiten_on, recipe.whitened_dim, recipe.dba, recipe.runtime) == (
        Pooling.GEM, (1.0, 0.5), "paris6k", 256, 10, Runtime.OPENVINO_F32)  # fmt: skip
    assert recipe.input_size == 96 and recipe.weights.untrained
    # Every field of RecipeSettings has its option: a field added there and not here fails.
    assert {field.name for field in dataclasses.fields(RecipeSettings)} <= set(vars(arguments))


def test_the_extraction_and_store_options_reach_build_settings_by_field():
    arguments = cli.parse(["build", "--images", "/photos", "--batch-size", "4", "--workers", "2",
                           "--checkpoint-every", "64", "--executor", "ray", "--ray-actors", "3", "--store", "annoy",
                           "--n-trees", "7", "--no-progress", "--force"])  # fmt: skip
    settings = commands.by_field(BuildSettings, arguments, store_params=commands.store_params(arguments))
    assert (settings.batch_size, settings.workers, settings.checkpoint_every, settings.executor, settings.ray_actors) == (
        4, 2, 64, Executor.RAY, 3)  # fmt: skip
    assert settings.store_spec("holiday").params == {"n_trees": 7}
    assert (settings.progress, settings.force) == (False, True)


def test_defaults_are_the_librarys():
    settings = commands.by_field(BuildSettings, cli.parse(["build"]), store_params=commands.store_params(cli.parse(["build"])))
    assert settings == dataclasses.replace(BuildSettings(), store_params=settings.store_params)
    assert settings.store_spec("oxford5k").params == {"n_trees": DEFAULT_N_TREES}


def test_serve_options_by_field_name(monkeypatch):
    from cbir_ui.server import ServeOptions

    for variable in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "CBIR_BUNDLE", "CBIR_CACHE_DIR", "CBIR_UPLOADS",
                     "CBIR_QUEUE_SIZE", "CBIR_MIRROR", "CBIR_INDEX_DIR", "CBIR_DATA_DIR"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    everything = parse_command("python app.py --host 0.0.0.0 --port 7861 --share --index-dir i --data-dir d --mirror "
                               "https://m --images p --name n --no-build --cache-dir c --weights none --backbones vgg16 "
                               "--input-size 96 --uploads on --keep-uploads k --queue-size 5")  # fmt: skip
    # Every option of `serve` is a field of ServeOptions, and every field an option.
    bundle = parse_command("python app.py --bundle b.tar")  # --images and --bundle: one or the other
    assert set(vars(everything)) - cli.CLI_ONLY | set(vars(bundle)) - cli.CLI_ONLY == SERVE_FIELDS
    options = commands.by_field(ServeOptions, everything)
    assert (options.host, options.port, options.share, options.index_dir, options.images, options.queue_size) == (
        "0.0.0.0", 7861, True, Path("i"), Path("p"), 5)  # fmt: skip
    # Options not given are left to ServeOptions' own defaults; the environment's are the CLI's.
    assert commands.by_field(ServeOptions, parse_command("python app.py")).port == ServeOptions.port
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("CBIR_BUNDLE", "https://example.org/b.tar")
    options = commands.by_field(ServeOptions, parse_command("python app.py"))
    assert (options.port, options.bundle) == (7999, "https://example.org/b.tar")


def test_serve_options_are_the_servers():
    from cbir_ui import server

    assert {field.name for field in dataclasses.fields(server.ServeOptions)} == SERVE_FIELDS


# ----------------------------------------------------------------------------- a store registered in a test


@pytest.fixture
def toy_store():
    stores.register(TOY_STORE)
    yield TOY_STORE
    stores.STORES.pop(TOY_STORE.name)


def test_a_registered_store_is_offered_by_cbir_build(toy_store):
    """Issue 27: a new store is one module plus one registry line; the command line reads the rest."""
    build = subparsers()["cbir build"]
    text = build.format_help()
    assert "toy" in re.search(r"--store \{([^}]*)\}", text).group(1).split(",")
    assert "--toy-leaves" in text and "leaves of the toy store" in " ".join(text.split())
    arguments = cli.parse(["build", "--images", "/photos", "--store", "toy", "--toy-leaves", "3"])
    settings = commands.by_field(BuildSettings, arguments, store_params=commands.store_params(arguments))
    assert settings.store_spec("holiday").params == {"toy_leaves": 3}
    with pytest.raises(SystemExit):
        cli.parse(["build", "--store", "toy", "--toy-leaves", "0"])  # a count


# ----------------------------------------------------------------------------- running (slow)


def _photos(folder: Path, n: int = 6) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return folder


@pytest.mark.slow
def test_cbir_build_and_build_index_py_write_the_same_descriptors(tmp_path, toy_store):
    photos = _photos(tmp_path / "photos")
    common = ["--images", str(photos), "--name", "demo", "--weights", "none", "--input-size", "96", "--no-progress"]
    assert cli.main(["build", *common, "--index-dir", str(tmp_path / "a")]) == 0
    assert build_index.main([*common, "--index-dir", str(tmp_path / "b")]) == 0
    a, b = (tmp_path / side / "demo" / "xception" / "descriptors.npy" for side in "ab")
    assert a.read_bytes() == b.read_bytes()
    # The test's store, built through the command line with its own flag.
    assert cli.main(["build", *common, "--index-dir", str(tmp_path / "c"), "--store", "toy", "--toy-leaves", "3"]) == 0
    from cbir.index import Manifest

    folder = tmp_path / "c" / "demo" / "xception"
    assert (folder / "toy.txt").is_file() and Manifest.read(folder).store.params == {"toy_leaves": 3}


@pytest.mark.slow
def test_weights_that_cannot_be_downloaded_suggest_a_smoke_test_and_leave_nothing_behind(tmp_path, monkeypatch, capsys):
    """Issue 31: offline, `--images DIR` with ImageNet weights fails on the download; the message
    names --weights none, and no half-made collection (collection.json alone) stays under the index."""
    from keras.src.applications import xception

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached weights
    # Port 9 (discard) on this machine: refused at once, with or without internet.
    monkeypatch.setattr(xception, "WEIGHTS_PATH_NO_TOP", "http://127.0.0.1:9/xception_notop.h5")
    photos = _photos(tmp_path / "photos", n=3)
    code = build_index.main(["--images", str(photos), "--index-dir", str(tmp_path / "idx"), "--input-size", "96",
                             "--no-progress"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: could not build xception with weights imagenet")
    assert "--weights none" in error and "\n" not in error.strip()
    parse_command(f"python build_index.py --images {photos} --weights none")  # the suggestion parses
    assert not (tmp_path / "idx" / "photos").exists()


def test_cbir_list_shows_recipes_stores_rows_evaluated_and_the_fix_of_a_damaged_index(tmp_path, capsys):
    from cbir.datasets import folder_collection
    from cbir.index import StoreSpec
    from tests.stubs import write_collection

    photos = _photos(tmp_path / "photos", n=4)
    folder = write_collection(tmp_path / "idx", folder_collection(photos, "demo"),
                              np.eye(4, 2048, dtype=np.float32), StoreSpec("exact"))  # fmt: skip
    broken = folder.parent / "vgg16"
    import shutil

    shutil.copytree(folder, broken)
    (broken / "descriptors.npy").unlink()
    assert cli.main(["list", "--index-dir", str(tmp_path / "idx")]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "demo"
    assert shown[1].split() == ["xception", "exact", "4", "rows", "2048-d", "not", "evaluated,", "untrained"]
    assert shown[2].split()[:2] == ["vgg16", "DAMAGED:"] and "python build_index.py --images" in shown[2]
    assert cli.main(["list", "--index-dir", str(tmp_path / "none")]) == 0
    assert "nothing is built" in capsys.readouterr().out


def test_cbir_export_packs_a_built_collection(tmp_path, capsys):
    from cbir.bundle import BUNDLE_MANIFEST
    from cbir.datasets import folder_collection
    from tests.stubs import write_collection

    photos = _photos(tmp_path / "photos", n=4)
    write_collection(tmp_path / "idx", folder_collection(photos, "demo"), np.eye(4, 2048, dtype=np.float32))
    bundle = tmp_path / "demo.tar"
    assert cli.main(["export", "demo", str(bundle), "--index-dir", str(tmp_path / "idx"), "--no-progress",
                     "--thumbnail-size", "32"]) == 0  # fmt: skip
    import tarfile

    with tarfile.open(bundle) as archive:
        assert BUNDLE_MANIFEST in archive.getnames()
    out = capsys.readouterr().out
    assert "the folder photos" in out or "Your own photos" in out
    parse_command(out.splitlines()[0].partition("Serve it with: ")[2])  # the command it suggests parses
