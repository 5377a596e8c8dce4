"""The launch file: statically everywhere, and really run where launch/launch_ros import."""
from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "segmentation.launch.py"


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _strings(tree: ast.Module) -> set[str]:
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == name]


def test_defines_generate_launch_description(tree: ast.Module) -> None:
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def _names_imported(tree: ast.Module) -> set[str]:
    """What the launch file takes from rtseg_ros.names."""
    return {alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "rtseg_ros.names"
            for alias in node.names}


def test_runs_the_node_executable_of_the_package(tree: ast.Module) -> None:
    from rtseg_ros import names

    # Package and executable names come from the names module, which holds them once.
    assert {"PACKAGE", "NODE_EXECUTABLE"} <= _names_imported(tree)
    assert names.PACKAGE == "rtseg_ros" and names.NODE_EXECUTABLE == "segmentation_node"
    # One node action, a plain or a managed (lifecycle:=true) one, with the same arguments.
    (node_call,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and any(keyword.arg == "executable" for keyword in node.keywords)]
    assert {"Node", "LifecycleNode"} <= {alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                                         and node.module == "launch_ros.actions" for alias in node.names}
    keywords = {kw.arg: kw.value for kw in node_call.keywords}
    assert {"package", "executable", "parameters", "remappings", "namespace"} <= set(keywords)
    assert isinstance(keywords["executable"], ast.Name) and keywords["executable"].id == "EXECUTABLE"


def test_loads_config_from_the_share_dir_and_remaps_the_camera(tree: ast.Module) -> None:
    strings = _strings(tree)
    assert {"config", "cpu.yaml", "fastdds_localhost.xml", "image", "/camera/image_raw"} <= strings
    assert _calls(tree, "get_package_share_directory")
    declared = {call.args[0].value for call in _calls(tree, "DeclareLaunchArgument") if call.args
                and isinstance(call.args[0], ast.Constant)}
    assert {"config", "image_topic", "namespace", "localhost_dds"} <= declared
    # The per-parameter overrides are declared from the node's parameter table; the common ones are in it.
    from rtseg_ros.names import PARAMETERS

    assert "PARAMETERS" in _names_imported(tree)
    loops = [node for node in ast.walk(tree) if isinstance(node, (ast.For, ast.comprehension))
             and "PARAMETERS" in ast.unparse(node.iter)]
    assert len(loops) >= 2, "both the declarations and the overrides should iterate PARAMETERS"
    assert {"weights", "model", "input_width", "input_height", "backend", "precision", "device"} <= set(PARAMETERS)


def test_dds_profile_is_set_only_on_request(tree: ast.Module) -> None:
    env_calls = _calls(tree, "SetEnvironmentVariable")
    assert env_calls
    for call in env_calls:
        assert any(kw.arg == "condition" for kw in call.keywords), "the DDS profile must be opt-in"


MULTI_CAMERA_FILE = REPO / "launch" / "multi_camera.launch.py"


def test_multi_camera_includes_the_segmentation_launch_once_per_camera() -> None:
    tree = ast.parse(MULTI_CAMERA_FILE.read_text(), filename=str(MULTI_CAMERA_FILE))
    assert "segmentation.launch.py" in _strings(tree)
    assert _calls(tree, "IncludeLaunchDescription") and _calls(tree, "GroupAction")
    cameras = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", "") == "CAMERAS")
    assert len(ast.literal_eval(cameras)) == 2


def _load(path: Path, monkeypatch: pytest.MonkeyPatch):
    """The launch file as a module, with rtseg_ros findable in an ament prefix (the colcon install)."""
    try:
        # The repo's launch/ folder is a namespace package here, so import a name, not just the module.
        from launch import LaunchDescription  # noqa: F401
        import launch_ros.actions  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"needs launch and launch_ros (bash ../shared/ros2-tools/install.sh): {exc}; "
                    "the static checks above cover the file here")
    import ros_workspace

    if not ros_workspace.missing_tools():
        prefix = ros_workspace.install_prefix()
        monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join([str(prefix), os.environ.get("AMENT_PREFIX_PATH", "")]))
    spec = importlib.util.spec_from_file_location(path.name.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except LookupError as exc:  # PackageNotFoundError: the package is not installed in an ament prefix
        pytest.skip(f"rtseg_ros is not installed in an ament prefix: {exc}")
    return module


def test_enumerated_arguments_offer_the_parameter_tables_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtseg_ros.names import PARAMETERS

    arguments = {arg.name: arg for arg in _load(LAUNCH_FILE, monkeypatch).generate_launch_description()
                 .get_launch_arguments()}
    for name, spec in PARAMETERS.items():
        expected = ["", *spec.choices] if spec.choices else None
        assert arguments[name].choices == expected, name
    assert arguments["log_level"].choices == ["debug", "info", "warn", "error", "fatal"]
    assert arguments["use_sim_time"].choices == arguments["localhost_dds"].choices == ["true", "false"]
    assert {"namespace", "node_name", "camera_info_topic", "image_topic", "config"} <= set(arguments)
    assert "compressed" in arguments["image_topic"].description


def test_overrides_are_typed_and_checked_before_the_node_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from launch import LaunchContext

    from rtseg_ros.ros.parameters import ParameterError

    module = _load(LAUNCH_FILE, monkeypatch)
    context = LaunchContext()
    for argument in module.generate_launch_description().get_launch_arguments():
        argument.execute(context)
    context.launch_configurations.update({"input_width": "512", "scales": "[2]", "weights": "2024",
                                          "overlay_alpha": "1", "publish_overlay": "false",
                                          "output_resolution": "640x480"})
    overrides = module._overrides(context)
    assert overrides["output_resolution"].value == "640x480"
    assert (overrides["input_width"], overrides["scales"], overrides["publish_overlay"]) == (512, [2], False)
    assert overrides["overlay_alpha"] == 1.0 and isinstance(overrides["overlay_alpha"], float)
    assert overrides["weights"].value == "2024"  # text stays text (launch_ros would read it as the number 2024)
    for name, text, message in (("scales", "2", "parameter scales: 2 is not allowed; it takes a list of integers"),
                                ("input_width", "500", "a multiple of 32"),
                                ("publish_overlay", "1", "it takes true or false"),
                                ("image_timeout", "soon", "'soon' is not allowed; it takes a number"),
                                ("output_resolution", "0x480", "width and height must be in 1..16384")):
        context.launch_configurations[name] = text
        with pytest.raises(ParameterError, match=message):
            module._overrides(context)
        context.launch_configurations[name] = ""


def test_generate_launch_description_where_launch_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from launch import LaunchDescription

    module = _load(LAUNCH_FILE, monkeypatch)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {arg.name for arg in description.get_launch_arguments()}
    assert {"config", "weights", "image_topic", "namespace"} <= arguments
    from rtseg_ros.names import PARAMETERS

    assert set(PARAMETERS) <= arguments, "every node parameter is a launch argument"
    weights = next(arg for arg in description.get_launch_arguments() if arg.name == "weights")
    assert PARAMETERS["weights"].description in weights.description
