"""Every ``rtseg`` command in the README's and docs/'s shell blocks parses as written, and the ones that
need no downloaded data run as written.

Parsing is what ``rtseg <sub>`` itself checks before doing anything: the subcommand exists, every
option is one of its options with the right number of values, and each value converts to the option's
type (choices, ranges, sizes). Only file and folder existence is not checked there: the docs name the
user's data (``~/data/cityscapes``). The commands in ``RUN_AS_WRITTEN`` then run in a fresh folder,
in the order the docs give them, so ``rtseg eval synthetic_bag ...`` reads the bag that
``rtseg make-bag --synthetic 8 ...`` wrote one line above.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rtseg_ros.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Shell blocks: fences with no language or a shell one (```python, ```yaml, ```text are not commands).
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
# `torchrun ... $(which rtseg) eval ...` runs `rtseg eval ...`; `$ ` is a prompt.
LAUNCHER = re.compile(r"^(?:\$\s+|.*\$\(which rtseg\)\s+)")
# Commands that need nothing downloaded (by their start, as the docs write them), run in this order.
RUN_AS_WRITTEN = (
    "rtseg make-bag --synthetic 8 --out synthetic_bag",
    "rtseg eval synthetic_bag --weights synthetic_toy",
    "rtseg train atonet_camvid --set data.root=/data/camvid --set train.batch_size=8 --show",
)


def shell_blocks(markdown: str) -> list[str]:
    """The text of each fenced block whose language is a shell's (or none)."""
    blocks: list[str] = []
    language: str | None = None  # None: outside a fence
    lines: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                if language in SHELL_LANGUAGES:
                    blocks.append("\n".join(lines) + "\n")
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) of every ``rtseg`` command in a shell block, continuation lines joined,
    a trailing ``# comment`` dropped."""
    found: list[tuple[str, str]] = []
    for page in PAGES:
        for block in shell_blocks(page.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;", line):
                    part = part.strip()
                    if "$(which rtseg)" in part:
                        part = LAUNCHER.sub("rtseg ", part)
                    part = LAUNCHER.sub("", part) if part.startswith("$ ") else part
                    if part.startswith("rtseg "):
                        words = shlex.split(part, comments=True)
                        found.append((page.relative_to(REPO).as_posix(), shlex.join(words)))
    return found


COMMANDS = documented_commands()


def _is_path(param: click.Parameter) -> bool:
    return isinstance(param.type, click.Path)


def check_parses(words: list[str]) -> None:
    """Parse ``words`` (after ``rtseg``) as the command would, without running it.

    Raises:
        click.UsageError: an unknown subcommand or option, a missing option value, a value the
            option's type refuses, or extra arguments.
    """
    group: click.Command = main
    context = click.Context(main, info_name="rtseg")
    while isinstance(group, click.Group) and words and not words[0].startswith("-"):
        command = group.get_command(context, words[0])
        if command is None:
            raise click.UsageError(f"no such command {words[0]!r}")
        context = click.Context(command, info_name=words[0], parent=context)
        group, words = command, words[1:]
    parser = group.make_parser(context)
    values, extra, _ = parser.parse_args(args=list(words))
    if isinstance(group, click.Group) and extra and group.get_command(context, extra[0]) is not None:
        check_parses([*context.command_path.split()[1:], *extra])  # a subcommand after the group's options
        extra = []
    if extra:
        raise click.UsageError(f"unexpected extra arguments {extra}")
    for param in group.params:
        value = values.get(param.name)
        if value is None or _is_path(param):
            continue  # existence of the user's files is theirs to provide
        param.type_cast_value(context, value)


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_documented_command_parses(page: str, command: str) -> None:
    try:
        check_parses(shlex.split(command)[1:])
    except click.ClickException as exc:
        pytest.fail(f"{page}: `{command}` does not parse: {exc.format_message()}")


def test_the_parser_check_catches_what_rtseg_would_refuse() -> None:
    check_parses(["eval", "bag", "--backend", "openvino", "--input-size", "256x512", "--json", "r.json"])
    for wrong, message in ((["evaluate", "bag"], "no such command"),
                           (["eval", "bag", "--weight", "w.pth"], "No such option"),
                           (["eval", "bag", "--backend", "tvm"], "tvm"),
                           (["eval", "bag", "--overlays", "many"], "many"),
                           (["make-bag", "--synthetic"], "requires an argument"),
                           (["params", "extra"], "unexpected extra arguments")):
        with pytest.raises(click.UsageError, match=message):
            check_parses(wrong)


def test_the_docs_hold_the_commands_that_run_as_written() -> None:
    commands = [command for _, command in COMMANDS]
    for start in RUN_AS_WRITTEN:
        assert any(command.startswith(start) for command in commands), f"no documented command starts {start!r}"
    assert any(command == "rtseg demo" for command in commands), "the README's quick start runs `rtseg demo`"


@pytest.mark.slow
def test_commands_that_need_no_download_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RTSEG_ROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RTSEG_MODELS_DIR", raising=False)
    runnable = [command for _, command in COMMANDS if command.startswith(RUN_AS_WRITTEN)]
    assert len(runnable) == len(RUN_AS_WRITTEN), runnable
    for command in runnable:
        result = CliRunner().invoke(main, shlex.split(command)[1:], catch_exceptions=False)
        assert result.exit_code == 0, f"`{command}`:\n{result.output}"
    report = json.loads((tmp_path / "results" / "synthetic.json").read_text())
    # The shipped toy model on 8 held-out synthetic scenes: mIoU 0.819 when the file was shipped.
    assert report["frames"] == 8 and report["miou"] > 0.75, report["miou"]
