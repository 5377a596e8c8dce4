"""What TensorRT will get, checked on any machine: the exported graph against Torch-TensorRT's converters.

Torch-TensorRT compiles an ``ExportedProgram`` by (1) running its decomposition table, (2) running
its lowering passes and (3) converting every node that has a converter whose capability validator
accepts it; the rest runs in PyTorch, splitting the graph into several engines with tensors crossing
between them. This module repeats (1) and the passes of (2) that matter for these networks, then
reports every op without a converter and every node a validator would reject, plus the patterns known
to convert *wrongly* (adaptive pooling). The converter table is data recorded from the Torch-TensorRT
sources (:data:`CONVERTER_TABLE`, regenerated with ``python -m rtseg_ros.engines.export_audit``).

What is modelled of Torch-TensorRT 2.13 (each with the source file it comes from, in the table):
``get_decompositions()`` (its enabled and disabled sets; its own decompositions count as handled),
the lowering passes ``remove_detach``, ``remove_assert_nodes``, ``replace_max_pool_with_indices`` and
``constant_fold`` (nodes that do not depend on the input), and the validators ``one_user_validator``
(``max.dim``/``min.dim``/batch norm), ``to_copy_dtype_validator``, ``getitem_validator`` and
``max_pool_param_validator``. Validators of ops these networks never produce are not modelled: an op
whose every converter has an unmodelled validator is reported, not assumed convertible.
"""
from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CONVERTER_TABLE = Path(__file__).with_name("torch_tensorrt_2.13_converters.json")

# Source files of the converter registrations and of the lowering steps, inside the repository.
CONVERTER_FILES = (
    "py/torch_tensorrt/dynamo/conversion/aten_ops_converters.py",
    "py/torch_tensorrt/dynamo/conversion/prims_ops_converters.py",
    "py/torch_tensorrt/dynamo/conversion/ops_evaluators.py",
    "py/torch_tensorrt/dynamo/conversion/custom_ops_converters.py",
)
DECOMPOSITION_GROUPS = "py/torch_tensorrt/dynamo/lowering/_decomposition_groups.py"
DECOMPOSITIONS = "py/torch_tensorrt/dynamo/lowering/_decompositions.py"
LOWERING_PASSES = "py/torch_tensorrt/dynamo/lowering/passes/_aten_lowering_pass.py"
COMPILER = "py/torch_tensorrt/dynamo/_compiler.py"
SAVE_LOAD = "py/torch_tensorrt/_compile.py"

# Validators reproduced below, by the name (or call) the converter registrations use.
MODELLED_VALIDATORS = frozenset({
    "one_user_validator", "getitem_validator", "max_pool_param_validator",
    "to_copy_dtype_validator(placeholder_only=False)", "to_copy_dtype_validator(placeholder_only=True)",
    # Only rejects cases these graphs never contain: deconvolutions on TensorRT-RTX, cat of a
    # rank-1 empty tensor, clones of a graph input.
    "convolution_capability_validator", "cat_validator",
    "lambda node, settings: not is_only_operator_on_placeholder(node, settings)", "is_only_operator_on_placeholder",
})
# Converted, but to different numbers: Torch-TensorRT's adaptive pooling uses one window of
# size in // out, PyTorch floor/ceil windows (they agree only when out divides in).
WRONG_RESULT_OPS = frozenset({
    "aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default",
    "aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool3d.default", "aten._adaptive_avg_pool3d.default",
    "aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default",
})
_REMOVED_BY_PASSES = frozenset({"aten.detach.default", "aten._assert_scalar.default",
                                "aten._assert_tensor_metadata.default"})
_MAX_POOL_WITH_INDICES = {"aten.max_pool1d_with_indices.default": "aten.max_pool1d.default",
                          "aten.max_pool2d_with_indices.default": "aten.max_pool2d.default",
                          "aten.max_pool3d_with_indices.default": "aten.max_pool3d.default"}


# ------------------------------------------------------------------------------------------ table
@dataclass(frozen=True)
class ConverterTable:
    """Torch-TensorRT's converters (op name -> validators of its registrations) and lowering sets.

    Op names are ``str(OpOverload)`` (``aten.convolution.default``); a registration on an overload
    packet (``aten.batch_norm``) covers all its overloads. ``None`` in a validator list: a converter
    with no validator.
    """

    version: str
    source: Mapping[str, Any]
    converters: Mapping[str, tuple[str | None, ...]]
    enabled_decompositions: tuple[str, ...]
    disabled_decompositions: tuple[str, ...]
    torch_tensorrt_decompositions: frozenset[str]
    to_copy_dtypes: frozenset[str]
    compile_signatures: Mapping[str, Any]

    @classmethod
    def load(cls, path: str | Path = CONVERTER_TABLE) -> ConverterTable:
        data = json.loads(Path(path).read_text())
        return cls(
            version=data["torch_tensorrt"], source=data["source"],
            converters={k: tuple(r["validator"] for r in v) for k, v in data["converters"].items()},
            enabled_decompositions=tuple(data["decompositions"]["enabled"]),
            disabled_decompositions=tuple(data["decompositions"]["disabled"]),
            torch_tensorrt_decompositions=frozenset(data["decompositions"]["torch_tensorrt"]),
            to_copy_dtypes=frozenset(data["to_copy_dtypes"]),
            compile_signatures=data["signatures"],
        )

    def decomposed_by_torch_tensorrt(self, op: str) -> bool:
        """Whether Torch-TensorRT's own decompositions replace ``op`` (by overload or packet)."""
        return op in self.torch_tensorrt_decompositions or op.rsplit(".", 1)[0] in self.torch_tensorrt_decompositions

    def validators(self, op: str) -> tuple[str | None, ...] | None:
        """The validators of ``op``'s converters, or ``None`` if it has no converter."""
        if op in self.converters:
            return self.converters[op]
        packet = op.rsplit(".", 1)[0]
        return self.converters.get(packet)


@lru_cache(maxsize=None)
def load_table(path: str = str(CONVERTER_TABLE)) -> ConverterTable:
    return ConverterTable.load(path)


# ------------------------------------------------------------------------------------------ lowering
def _resolve_ops(names: Iterable[str]) -> list[Any]:
    import torch

    ops = []
    for name in names:
        parts = name.split(".")
        if parts[0] != "aten":
            continue
        target = getattr(torch.ops.aten, parts[1], None)
        if target is not None and len(parts) > 2:
            target = getattr(target, parts[2], None)
        if target is not None:  # an op this torch build does not have cannot be in its graphs
            ops.append(target)
    return ops


def decomposition_table(table: ConverterTable) -> dict[Any, Any]:
    """Torch-TensorRT's ``get_decompositions(enable_experimental_decompositions=False)``, rebuilt.

    Its own decompositions (``TORCH_TRT_DECOMPOSITIONS``) are left out: the ops they replace count
    as handled in :func:`audit_graph`.
    """
    from torch._decomp import get_decompositions
    from torch._export.utils import _collect_all_valid_cia_ops_for_aten_namespace, _get_decomp_for_cia

    disabled = set(_resolve_ops(table.disabled_decompositions))
    composite = {op: _get_decomp_for_cia(op) for op in _collect_all_valid_cia_ops_for_aten_namespace()
                 if op not in disabled}
    merged = {**get_decompositions(_resolve_ops(table.enabled_decompositions)), **composite}
    return {op: fn for op, fn in merged.items() if not table.decomposed_by_torch_tensorrt(str(op))}


def lower_like_torch_tensorrt(exported: Any, table: ConverterTable | None = None) -> Any:
    """The graph module Torch-TensorRT's partitioner sees (decomposed, parameters as attributes)."""
    table = table or load_table()
    return exported.run_decompositions(decomposition_table(table)).module()


def op_name(target: Any) -> str:
    """``aten.x.overload`` for ATen/custom ops, ``operator.name`` for Python operators."""
    name = getattr(target, "__name__", None)
    if name and getattr(operator, name, None) is target:
        return f"operator.{name}"
    return str(target)


# ------------------------------------------------------------------------------------------ audit
@dataclass(frozen=True)
class Finding:
    """A node TensorRT would not convert, or would convert to different numbers."""

    op: str
    node: str
    reason: str


@dataclass
class AuditReport:
    """Ops of a lowered graph and what Torch-TensorRT would do with them.

    Attributes:
        ops: count of each op that reaches the converters (input-dependent call nodes).
        unsupported: nodes whose op has no converter, or whose converters all carry validators
            that are not modelled here.
        fallbacks: nodes a modelled validator rejects (they would run in PyTorch).
        wrong_results: nodes that convert to different numbers than PyTorch computes.
        folded: ops of nodes constant-folded before conversion (not counted in ``ops``).
    """

    ops: Counter = field(default_factory=Counter)
    unsupported: list[Finding] = field(default_factory=list)
    fallbacks: list[Finding] = field(default_factory=list)
    wrong_results: list[Finding] = field(default_factory=list)
    folded: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.unsupported or self.fallbacks or self.wrong_results)

    def problems(self) -> list[Finding]:
        return [*self.unsupported, *self.fallbacks, *self.wrong_results]

    def summary(self) -> str:
        if self.ok:
            return f"all {sum(self.ops.values())} nodes ({len(self.ops)} ops) convert"
        return "; ".join(f"{f.op} ({f.node}): {f.reason}" for f in self.problems())

    def to_dict(self) -> dict[str, Any]:
        def rows(findings: list[Finding]) -> list[dict[str, str]]:
            return [{"op": f.op, "node": f.node, "reason": f.reason} for f in findings]

        return {"ok": self.ok, "ops": dict(sorted(self.ops.items())), "unsupported": rows(self.unsupported),
                "fallbacks": rows(self.fallbacks), "wrong_results": rows(self.wrong_results),
                "folded": dict(sorted(self.folded.items()))}


def _getitem_index(node: Any) -> Any:
    return node.args[1] if len(node.args) > 1 else None


def _one_getitem_zero_user(node: Any) -> bool:
    users = list(node.users)
    return len(users) == 1 and users[0].target is operator.getitem and _getitem_index(users[0]) == 0


def _validator_rejects(validator: str, node: Any, table: ConverterTable, converted: set[Any]) -> str | None:
    """Why ``validator`` rejects ``node`` (``None``: accepted), as Torch-TensorRT 2.13 decides it."""
    if validator == "one_user_validator":
        if not _one_getitem_zero_user(node):
            used = sorted({_getitem_index(u) for u in node.users if u.target is operator.getitem}, key=str)
            return f"more than its first output is used (outputs {used}); only values-or-first-output converts"
        return None
    if validator.startswith("to_copy_dtype_validator"):
        dtype = node.kwargs.get("dtype")
        if dtype is None:
            return "a copy without an explicit dtype is rejected"
        if str(dtype) not in table.to_copy_dtypes:
            return f"cast to {dtype} is not one the converter accepts ({', '.join(sorted(table.to_copy_dtypes))})"
        return None
    if validator == "getitem_validator":
        source = node.args[0]
        if source.op != "get_attr" and source not in converted:
            return "reads an output of a node that does not convert"
        return None
    if validator == "max_pool_param_validator":
        dilation = node.args[4] if len(node.args) > 4 else 1
        ceil_mode = node.args[5] if len(node.args) > 5 else False
        if dilation != 1:
            return f"dilation={dilation} (only the default converts)"
        if ceil_mode is not False:
            return "ceil_mode=True does not convert"
        return None
    return None  # the rest of MODELLED_VALIDATORS: never reject in these graphs (see its comment)


def audit_graph(graph_module: Any, table: ConverterTable | None = None) -> AuditReport:
    """Check a lowered graph module (see :func:`lower_like_torch_tensorrt`) node by node."""
    table = table or load_table()
    report = AuditReport()
    graph = graph_module.graph
    depends_on_input: set[Any] = set()
    converted: set[Any] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            depends_on_input.add(node)
            continue
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name in _REMOVED_BY_PASSES:
            continue
        if not any(arg in depends_on_input for arg in node.all_input_nodes):
            report.folded[name] += 1  # constant_fold computes it once at build time
            converted.add(node)
            continue
        depends_on_input.add(node)
        if name in _MAX_POOL_WITH_INDICES and _one_getitem_zero_user(node):
            name = _MAX_POOL_WITH_INDICES[name]  # replace_max_pool_with_indices
        report.ops[name] += 1
        if table.decomposed_by_torch_tensorrt(name):
            converted.add(node)
            continue
        validators = table.validators(name)
        if validators is None:
            report.unsupported.append(Finding(name, node.name, f"no converter in Torch-TensorRT {table.version}"))
            continue
        if any(v is not None and v not in MODELLED_VALIDATORS for v in validators) and None not in validators:
            report.unsupported.append(Finding(name, node.name, f"converter validator not modelled: {validators}"))
            continue
        reasons = [_validator_rejects(v, node, table, converted) if v else None for v in validators]
        if all(reasons):
            report.fallbacks.append(Finding(name, node.name, reasons[0]))
            continue
        converted.add(node)
        if name in WRONG_RESULT_OPS:
            report.wrong_results.append(Finding(
                name, node.name, "converts with one uniform window: differs from PyTorch unless the output "
                "size divides the input size"))
    return report


def audit_exported(exported: Any, table: ConverterTable | None = None) -> AuditReport:
    """Lower ``exported`` as Torch-TensorRT does and audit the result."""
    table = table or load_table()
    return audit_graph(lower_like_torch_tensorrt(exported, table), table)


# ------------------------------------------------------------------------------------------ generation
def _git_show(repo: Path, tag: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def _short_op(expression: str) -> str:
    return expression.removeprefix("torch.ops.")


def scan_converters(sources: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every ``@dynamo_tensorrt_converter(target, capability_validator=...)`` in ``sources`` (path -> text)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for decorator in node.decorator_list:
                func = getattr(decorator, "func", None)
                if getattr(func, "id", getattr(func, "attr", None)) != "dynamo_tensorrt_converter":
                    continue
                target = ast.unparse(decorator.args[0])
                validator = next((ast.unparse(k.value) for k in decorator.keywords
                                  if k.arg == "capability_validator"), None)
                found.setdefault(_short_op(target), []).append(
                    {"validator": validator, "source": f"{path}:{decorator.lineno}"})
    return dict(sorted(found.items()))


def _aten_names(block: str) -> list[str]:
    return sorted({m.group(0) for m in re.finditer(r"aten\.\w+(?:\.\w+)?", block)})


def scan_decompositions(groups: str, decompositions: str) -> dict[str, list[str]]:
    enabled = groups.split("torch_enabled_decompositions:")[1].split("}")[0]
    disabled = groups.split("torch_disabled_decompositions:")[1].split("}")[0]
    own = set()
    for match in re.finditer(r"(?:register_torch_trt_decomposition|replace_inplace_op)\(\s*([\w.]+)",
                             decompositions):
        own.add(_short_op(match.group(1)))
    return {"enabled": _aten_names(enabled), "disabled": _aten_names(disabled), "torch_tensorrt": sorted(own)}


def scan_signature(text: str, function: str) -> list[str]:
    """Parameter names of the first top-level ``def function`` in ``text`` (``**kwargs`` as ``**``)."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            return names + (["**"] if args.kwarg else [])
    raise ValueError(f"no function {function!r}")


def scan_to_copy_dtypes(text: str) -> list[str]:
    block = text.split("def to_copy_dtype_validator")[1].split("allowed_casts = {")[1].split("}")[0]
    return sorted(str(getattr(__import__("torch"), name.strip().split(".")[1])) for name in block.split(",")
                  if name.strip())


def generate(repo: Path, tag: str, signature_tags: Iterable[str]) -> dict[str, Any]:
    """The table's content from a clone of github.com/pytorch/TensorRT at ``tag``."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", f"{tag}^{{commit}}"], capture_output=True,
                            text=True, check=True).stdout.strip()
    signatures: dict[str, Any] = {}
    for other in signature_tags:
        other_commit = subprocess.run(["git", "-C", str(repo), "rev-parse", f"{other}^{{commit}}"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        signatures[other.lstrip("v")] = {
            "commit": other_commit,
            "dynamo.compile": scan_signature(_git_show(repo, other, COMPILER), "compile"),
            "save": scan_signature(_git_show(repo, other, SAVE_LOAD), "save"),
            "load": scan_signature(_git_show(repo, other, SAVE_LOAD), "load"),
        }
    return {
        "torch_tensorrt": tag.lstrip("v"),
        "source": {"repository": "https://github.com/pytorch/TensorRT", "tag": tag, "commit": commit,
                   "converter_files": list(CONVERTER_FILES),
                   "decompositions": [DECOMPOSITION_GROUPS, DECOMPOSITIONS],
                   "lowering_passes": LOWERING_PASSES, "signatures": [COMPILER, SAVE_LOAD],
                   "generated_by": "python -m rtseg_ros.engines.export_audit --repo <clone> --tag " + tag},
        "converters": scan_converters({p: _git_show(repo, tag, p) for p in CONVERTER_FILES}),
        "decompositions": scan_decompositions(_git_show(repo, tag, DECOMPOSITION_GROUPS),
                                              _git_show(repo, tag, DECOMPOSITIONS)),
        "to_copy_dtypes": scan_to_copy_dtypes(_git_show(repo, tag, CONVERTER_FILES[0])),
        "signatures": signatures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the Torch-TensorRT converter table from its sources.")
    parser.add_argument("--repo", type=Path, required=True, help="a git clone of github.com/pytorch/TensorRT")
    parser.add_argument("--tag", default="v2.13.0")
    parser.add_argument("--signature-tags", nargs="+", default=["v2.8.0", "v2.13.0"])
    parser.add_argument("--out", type=Path, default=CONVERTER_TABLE)
    args = parser.parse_args(argv)
    data = generate(args.repo, args.tag, args.signature_tags)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(data['converters'])} converter targets of {args.tag} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
