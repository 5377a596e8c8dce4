"""One source tree for Humble and Jazzy: only rclpy API both have, Python 3.10 syntax, rosdep keys.

The rclpy sources of both distributions come from ``../shared/ros2-tools`` (pure Python, not
installed); rosdep resolution needs ``rosdep`` with the offline database that ros2-tools installs.
Where they are missing, the checks skip and say so.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS2_TOOLS = ROOT.parent / "shared" / "ros2-tools"
# Code that runs inside a ROS process: the ROS layer, the launch files and the test helpers.
ROS_CODE = sorted([*(ROOT / "rtseg_ros" / "ros").rglob("*.py"), *(ROOT / "launch").glob("*.py")])
DISTROS = {"humble": "ubuntu:jammy", "jazzy": "ubuntu:noble"}


def _rclpy_tree(distro: str) -> Path:
    tree = ROS2_TOOLS / f"{distro}-rclpy" / "rclpy"
    if not tree.is_dir():
        pytest.skip(f"needs the {distro} rclpy sources in {tree.parent} (../shared/ros2-tools)")
    return tree


def _definitions(tree: Path) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Function/method name -> the keyword parameters any definition of it accepts (``*`` for **kwargs),
    every name defined anywhere (and every method the tree itself calls: those of rclpy's C++ handles,
    such as ``destroy_when_not_in_use``, have no Python definition), and the dotted module names of ``tree``."""
    params: dict[str, set[str]] = defaultdict(set)
    names: set[str] = set()
    modules: set[str] = set()
    for path in tree.rglob("*.py"):
        rel = path.relative_to(tree.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules.add(".".join(parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                params[node.name].update(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs])
                if args.kwarg is not None:
                    params[node.name].add("*")
                names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            names.add(name.id)
                        elif isinstance(name, ast.Attribute):
                            names.add(name.attr)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
    return params, names, modules


def test_ros_layer_uses_only_rclpy_api_that_humble_and_jazzy_both_have() -> None:
    humble_params, humble_names, humble_modules = _definitions(_rclpy_tree("humble"))
    jazzy_params, jazzy_names, jazzy_modules = _definitions(_rclpy_tree("jazzy"))
    # Names that Jazzy's rclpy defines and Humble's does not: calling one of them breaks Humble.
    jazzy_only = {name for name in jazzy_names - humble_names if not name.startswith("_")}
    # Attribute checks look at functions and methods only: data attribute names are too generic.
    jazzy_only_functions = {name for name in jazzy_only if name in jazzy_params}
    problems: list[str] = []
    for path in ROS_CODE:
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rclpy":
                if node.module not in humble_modules or node.module not in jazzy_modules:
                    problems.append(f"{where}:{node.lineno}: module {node.module} is missing in one distro")
                for alias in node.names:
                    if alias.name in jazzy_only:
                        problems.append(f"{where}:{node.lineno}: {node.module}.{alias.name} is Jazzy-only")
            elif isinstance(node, ast.Attribute) and node.attr in jazzy_only_functions:
                problems.append(f"{where}:{node.lineno}: .{node.attr} is Jazzy-only (Humble's rclpy has no such name)")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method = node.func.attr
                if method in humble_params and method in jazzy_params:
                    for keyword in node.keywords:
                        if keyword.arg is None:
                            continue
                        for distro, params in (("humble", humble_params), ("jazzy", jazzy_params)):
                            if keyword.arg not in params[method] and "*" not in params[method]:
                                problems.append(
                                    f"{where}:{node.lineno}: {method}({keyword.arg}=...) is not accepted by {distro}")
    assert not problems, "\n".join(problems)


def test_package_parses_as_python_3_10() -> None:
    """Humble on Ubuntu 22.04 (JetPack 6) runs Python 3.10."""
    failures = []
    for path in sorted([*(ROOT / "rtseg_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py"), ROOT / "setup.py"]):
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
        except SyntaxError as exc:
            failures.append(f"{path.relative_to(ROOT)}:{exc.lineno}: {exc.msg}")
    assert not failures, "\n".join(failures)


def _package_keys() -> list[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    tags = ("depend", "build_depend", "buildtool_depend", "exec_depend", "test_depend", "build_export_depend")
    return [element.text.strip() for tag in tags for element in root.iter(tag)]


@pytest.mark.parametrize("distro", sorted(DISTROS))
def test_every_package_xml_key_resolves_with_rosdep(distro: str) -> None:
    if shutil.which("rosdep") is None:
        pytest.skip("needs rosdep with the offline database of ../shared/ros2-tools (bash ../shared/ros2-tools/install.sh)")
    keys = _package_keys()
    assert keys, "package.xml declares no dependencies"
    unresolved = []
    for key in keys:
        result = subprocess.run(["rosdep", "resolve", key, "--rosdistro", distro, "--os", DISTROS[distro]],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            unresolved.append(f"{key}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    assert not unresolved, f"rosdep ({distro}, {DISTROS[distro]}) cannot resolve:\n" + "\n".join(unresolved)


def test_package_xml_declares_what_the_package_imports() -> None:
    """ROS packages imported by the package and its launch files are declared, and nothing unused is."""
    keys = set(_package_keys())
    imported: set[str] = set()
    for path in [*(ROOT / "rtseg_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    ros_packages = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "builtin_interfaces", "rcl_interfaces",
                    "launch", "launch_ros", "ament_index_python", "vision_msgs", "cv_bridge", "composition_interfaces",
                    "lifecycle_msgs"}
    missing = sorted((imported & ros_packages) - keys)
    assert not missing, f"imported but not in package.xml: {missing}"
    unused = sorted((keys & ros_packages) - imported - {"launch", "launch_ros"})
    assert not unused, f"declared in package.xml but never imported: {unused}"
    assert "ament_python" not in keys, "ament_python is a build type (<export>), not a rosdep key"


def test_lifecycle_callbacks_the_managed_node_overrides_exist_in_humble_and_jazzy() -> None:
    """ManagedSegmentationNode overrides rclpy.lifecycle's transition callbacks: each must be one that both
    distributions' LifecycleNode calls, with the same signature, or a transition would silently do nothing."""
    source = ROOT / "rtseg_ros" / "ros" / "segmentation_node.py"
    managed = next(node for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                   if isinstance(node, ast.ClassDef) and node.name == "ManagedSegmentationNode")
    overrides = {node.name: [a.arg for a in node.args.args] for node in managed.body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("on_")}
    assert {"on_configure", "on_activate", "on_deactivate", "on_cleanup", "on_shutdown"} <= set(overrides)
    for distro in DISTROS:
        lifecycle = _rclpy_tree(distro) / "lifecycle" / "node.py"
        callbacks = {node.name: [a.arg for a in node.args.args] for node in ast.walk(ast.parse(lifecycle.read_text()))
                     if isinstance(node, ast.FunctionDef) and node.name.startswith("on_")}
        for name, arguments in overrides.items():
            assert name in callbacks, f"{distro}'s LifecycleNode has no {name}"
            assert len(arguments) == len(callbacks[name]), f"{name}{arguments} vs {distro}'s {callbacks[name]}"
