"""docs/TUTORIAL.md cannot rot: every fenced bash and python block in it is run here.

The bash commands run in a temporary folder on the tiny corpus (SPARSELM_DATA points there), with
tiny model sizes added to `sparselm train` when the tutorial does not set them; the python blocks
run as written. A command this test does not know how to run fails the test, so a new kind of
command in the tutorial needs a line here.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparselm.cli import main

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "TUTORIAL.md"
TINY_TRAIN = {"--hidden": "9", "--emb": "8", "--bptt": "5", "--batch-size": "4"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def bash_commands() -> list[list[str]]:
    """Every command of the bash blocks, split into words; comments and blank lines dropped."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def with_tiny_sizes(args: list[str]) -> list[str]:
    extra = [w for flag, value in TINY_TRAIN.items() if flag not in args for w in (flag, value)]
    return args + extra


def run_command(words: list[str]) -> None:
    if words[:2] == ["pip", "install"]:
        assert words[2:] == ["-e", ".[dev]"], words  # the package is installed already
    elif words[0] == "export":
        assert words[1].startswith("SPARSELM_DATA="), words  # the test sets it to the tiny corpus
    elif words[0] == "sparselm":
        args = with_tiny_sizes(words[1:]) if words[1] == "train" else words[1:]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{' '.join(words)}:\n{result.output}"
    elif words[:3] == ["python", "-m", "pytest"]:
        assert all("test_tutorial" not in w for w in words)  # no recursion
        done = subprocess.run(
            [sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    else:
        pytest.fail(f"tests/test_tutorial.py does not know how to run: {' '.join(words)}")


def test_tutorial_has_commands():
    names = [w[1] for w in bash_commands() if w[0] == "sparselm"]
    assert {"train", "evaluate", "generate", "info", "plot-weights", "plot-curves"} <= set(names)
    assert blocks("python")


def test_bash_blocks_run_in_order(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSELM_DATA", str(tiny_corpus))
    monkeypatch.chdir(tmp_path)
    for words in bash_commands():
        run_command(words)
    assert (tmp_path / "checkpoints" / "teach" / "plots").is_dir()
    assert (tmp_path / "checkpoints" / "curves.png").is_file()


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = blocks("python")[index]
    exec(compile(code, f"{TUTORIAL}:python block {index}", "exec"), {"__name__": "__tutorial__"})
