"""``rtseg params``: the node's parameter table as Markdown, from names.PARAMETERS, without torch or rclpy."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from rtseg_ros.cli import main
from rtseg_ros.cli.params import TABLE_HEADER, parameter_table
from rtseg_ros.names import PARAMETERS, ParameterSpec


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells
    return rows


def test_the_command_prints_one_row_per_parameter_in_table_order() -> None:
    result = CliRunner().invoke(main, ["params"])
    assert result.exit_code == 0, result.output
    assert result.output == parameter_table()
    lines = result.output.splitlines()
    assert lines[0] == "| " + " | ".join(TABLE_HEADER) + " |" and lines[1] == "|---|---|---|---|---|"
    assert list(_rows(result.output)) == list(PARAMETERS)


def test_rows_show_defaults_allowed_values_and_when_a_change_applies() -> None:
    rows = _rows(parameter_table())
    assert rows["model"][1:4] == ["`mfaranet`", "mfaranet, atonet", "rebuilds the engine"]
    assert rows["weights"][1] == '`""`'
    assert rows["input_width"][1:3] == ["`1024`", "32..8192, multiples of 32"]
    assert rows["scales"][1:3] == ["`[1, 2, 3, 4]`", "subsets of 1..4"]
    assert rows["publish_overlay"][1:4] == ["`true`", "", "immediately"]
    assert rows["overlay_alpha"][2] == "0.0..1.0"
    assert rows["qos_depth"][2:4] == ["1..100", "start-up only"]
    for name, spec in PARAMETERS.items():
        assert rows[name][4] == spec.description


def test_pipes_in_a_description_do_not_break_the_table() -> None:
    table = parameter_table({"x": ParameterSpec("a", "one | two")})
    assert _rows(table)["x"][4] == "one \\| two"


def test_the_command_imports_neither_torch_nor_rclpy() -> None:
    code = ("import sys; from click.testing import CliRunner; from rtseg_ros.cli import main; "
            "result = CliRunner().invoke(main, ['params']); assert result.exit_code == 0, result.output; "
            "loaded = {'torch', 'rclpy'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_values_are_typed_like_a_params_file() -> None:
    # What the launch file does with NAME:=VALUE arguments.
    assert PARAMETERS["input_width"].parse("512") == 512
    assert PARAMETERS["scales"].parse("[2]") == [2]
    assert PARAMETERS["publish_overlay"].parse("false") is False
    assert PARAMETERS["overlay_alpha"].parse("0.25") == 0.25
    # Text parameters keep what was typed, even when it would read as a number or a mapping.
    assert PARAMETERS["weights"].parse("2024.pth") == "2024.pth"
    assert PARAMETERS["weights"].parse("1") == "1"
    assert PARAMETERS["device"].parse("cuda:0") == "cuda:0"


def test_docs_parameter_table_is_current() -> None:
    """docs/parameters.md carries the table `rtseg params` prints; regenerate it when the table changes."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert parameter_table() in doc, "docs/parameters.md is stale: rerun `rtseg params` and paste its table"
