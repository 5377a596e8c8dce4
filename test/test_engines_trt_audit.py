"""CPU audit of what the TensorRT backend hands Torch-TensorRT (no CUDA, no TensorRT needed).

For each network setting the exact module the backend compiles (:func:`tensorrt_head`) is exported
as the backend exports it, lowered as Torch-TensorRT 2.13 lowers it, and checked: (a) the lowered
graph computes what eager computes, (b) every op has a Torch-TensorRT 2.13 converter, (c) no node
falls into a known fallback or wrong-result pattern (uint8 casts, two-output max, adaptive pooling).

The whole matrix (6 network settings x with/without confidence x 4 sizes) is slow on 2 CPU cores;
by default a subset runs that covers every setting, both confidence modes and every size, including
1024x2048 once. The rest carry the ``exhaustive`` marker, which the default run deselects
(about 25 minutes more on 2 cores): ``python -m pytest -m exhaustive test/test_engines_trt_audit.py``.
"""
from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtseg_ros.engines import export_audit
from rtseg_ros.engines.export_audit import ConverterTable, audit_exported, audit_graph, load_table
from rtseg_ros.engines.tensorrt_engine import (
    ENGINE_LABEL_DTYPE,
    batch_example,
    batch_input,
    compile_settings,
    export_body,
    export_head,
    tensorrt_body,
    tensorrt_head,
)
from rtseg_ros.nets import build_model

SIZES = [(256, 512), (480, 640), (384, 640), (1024, 2048)]
NETWORKS = {"atonet": ("atonet", (1, 2, 3, 4)), "mfaranet": ("mfaranet", (1, 2, 3, 4)),
            "mfaranet_s1": ("mfaranet", (1,)), "mfaranet_s2": ("mfaranet", (2,)),
            "mfaranet_s3": ("mfaranet", (3,)), "mfaranet_s4": ("mfaranet", (4,))}
# Every network, both confidence modes and every size; 1024x2048 once (ATONet: its pooling grid
# is the size-dependent part).
FAST = {("atonet", True, (480, 640)), ("atonet", False, (384, 640)), ("atonet", True, (1024, 2048)),
        ("mfaranet", True, (384, 640)), ("mfaranet", False, (256, 512)), ("mfaranet_s1", True, (480, 640)),
        ("mfaranet_s2", False, (384, 640)), ("mfaranet_s3", True, (256, 512)), ("mfaranet_s4", False, (480, 640))}


def _cases():
    for network in NETWORKS:
        for confidence in (False, True):
            for size in SIZES:
                marks = () if (network, confidence, size) in FAST else (pytest.mark.exhaustive,)
                label = f"{network}-{'conf' if confidence else 'labels'}-{size[0]}x{size[1]}"
                yield pytest.param(network, confidence, size, id=label, marks=marks)


@pytest.fixture(scope="module")
def table() -> ConverterTable:
    return load_table()


@pytest.mark.parametrize("network,confidence,size", list(_cases()))
def test_tensorrt_module_exports_fully_convertible(network, confidence, size, table):
    name, scales = NETWORKS[network]
    torch.manual_seed(0)
    head = tensorrt_head(build_model(name, 19, scales).eval(), size, confidence)
    image = torch.randn(1, 3, *size)
    exported = export_head(head, image)
    lowered = export_audit.lower_like_torch_tensorrt(exported, table)

    report = audit_graph(lowered, table)
    assert report.ok, report.summary()
    assert report.ops["aten.argmax.default"] == 1 and "aten.max.dim" not in report.ops
    assert not any("adaptive" in op for op in report.ops)

    with torch.no_grad():
        expected = head(image)
        got = lowered(image)
    labels, expected_labels = (got[0], expected[0]) if confidence else (got, expected)
    assert labels.dtype == ENGINE_LABEL_DTYPE
    # The decomposed graph rounds differently from eager; with random weights a few of 2M pixels
    # are near-ties whose argmax flips (the same agreement bar as the parity tests).
    disagreement = (labels != expected_labels).double().mean().item()
    assert disagreement < 1e-4, f"labels differ on {disagreement:.2e} of the pixels"
    if confidence:
        assert got[1].dtype == torch.float32
        assert (got[1] - expected[1]).abs().max().item() < 1e-5


def test_fp16_network_exports_fully_convertible(table):
    # The fp16 head adds the float32 casts of the confidence path; export needs no fp16 kernels.
    head = tensorrt_head(build_model("atonet", 19).eval(), (256, 512), True, dtype=torch.float16)
    report = audit_exported(export_head(head, torch.zeros(1, 3, 256, 512, dtype=torch.float16)), table)
    assert report.ok, report.summary()
    assert report.ops["aten._to_copy.default"] >= 2  # labels to int32, scores to float32


@pytest.mark.parametrize("network,size", [("atonet", (256, 512)), ("mfaranet", (128, 256))])
def test_batched_body_exports_fully_convertible_with_a_dynamic_batch(network, size, table):
    """The batched engine's graph: the batch dimension symbolic (1 to max_batch), every node converts,
    and the lowered graph gives eager's logits at every batch size of the range."""
    name, scales = NETWORKS[network]
    torch.manual_seed(0)
    body = tensorrt_body(build_model(name, 19, scales).eval())
    exported = export_body(body, batch_example(size, 4, torch.float32), max_batch=4)
    (image,) = [spec for spec in exported.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    batch_dim = exported.graph.find_nodes(op="placeholder", target=image.arg.name)[0].meta["val"].shape[0]
    assert isinstance(batch_dim, torch.SymInt)
    assert exported.range_constraints[batch_dim.node.expr].lower == 1
    assert exported.range_constraints[batch_dim.node.expr].upper == 4
    lowered = export_audit.lower_like_torch_tensorrt(exported, table)
    report = audit_graph(lowered, table)
    assert report.ok, report.summary()
    assert not any("adaptive" in op for op in report.ops)
    images = torch.randn(4, 3, *size)
    with torch.no_grad():
        expected = body(images)
        for count in (1, 3, 4):
            got = lowered(images[:count])
            assert got.shape == (count, 19, size[0] // 4, size[1] // 4)
            assert (got - expected[:count]).abs().max().item() < 1e-4


def test_batch_input_is_an_optimization_profile_from_1_to_max_batch():
    calls = []

    class FakeTorchTensorRT:
        @staticmethod
        def Input(**kwargs):  # noqa: N802 - torch_tensorrt's own name
            calls.append(kwargs)
            return kwargs

    batch_input(FakeTorchTensorRT, (256, 512), 4, torch.float16)
    assert calls == [{"min_shape": (1, 3, 256, 512), "opt_shape": (4, 3, 256, 512),
                      "max_shape": (4, 3, 256, 512), "dtype": torch.float16}]
    assert batch_example((256, 512), 4, torch.float16).shape == (2, 3, 256, 512)
    assert batch_example((256, 512), 1, torch.float16).shape == (1, 3, 256, 512)


# ------------------------------------------------------------------------------ the audit itself
class _OldHead(nn.Module):
    """The pre-fix head: adaptive pooling, two-output max, uint8 cast inside the graph."""

    def forward(self, x: torch.Tensor):
        pooled = F.interpolate(F.adaptive_avg_pool2d(x, (3, 5)), size=x.shape[-2:], mode="bilinear")
        scores = (x + pooled)[0]
        best, labels = scores.max(dim=0)
        return labels.to(torch.uint8), best


def test_audit_finds_the_known_fallback_patterns(table):
    with torch.no_grad():
        exported = torch.export.export(_OldHead(), (torch.randn(1, 4, 16, 20),), strict=False)
    report = audit_exported(exported, table)
    assert not report.ok
    fallbacks = {f.op for f in report.fallbacks}
    assert "aten._to_copy.default" in fallbacks  # uint8
    assert "aten.max.dim" in fallbacks  # values and indices both used
    assert {f.op for f in report.wrong_results} == {"aten._adaptive_avg_pool2d.default"}


def test_audit_reports_ops_without_a_converter(table):
    class Unconverted(nn.Module):
        def forward(self, x):
            return torch.special.erfcx(x)

    with torch.no_grad():
        exported = torch.export.export(Unconverted(), (torch.randn(4),), strict=False)
    report = audit_exported(exported, table)
    assert [f.op for f in report.unsupported] == ["aten.special_erfcx.default"]


def test_getitem_of_a_rejected_node_is_not_converted(table):
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    values = graph.call_function(torch.ops.aten.max.dim, (x, 0))
    first = graph.call_function(operator.getitem, (values, 0))
    second = graph.call_function(operator.getitem, (values, 1))
    graph.output((first, second))
    report = audit_graph(torch.fx.GraphModule(nn.Module(), graph), table)
    assert {f.op for f in report.fallbacks} == {"aten.max.dim", "operator.getitem"}


# ------------------------------------------------------------------------------ the recorded data
def test_converter_table_records_its_source(table):
    assert table.version == "2.13.0"
    source = table.source
    assert source["repository"] == "https://github.com/pytorch/TensorRT" and source["tag"] == "v2.13.0"
    assert len(source["commit"]) == 40
    assert all(path.startswith("py/torch_tensorrt/dynamo/") for path in source["converter_files"])
    # Spot checks against the 2.13 sources: converters with and without validators.
    assert table.validators("aten.convolution.default") == ("convolution_capability_validator",)
    assert table.validators("aten.max.dim") == ("one_user_validator",)
    assert table.validators("aten.argmax.default") == (None,)
    assert table.validators("aten.upsample_bilinear2d.vec") == (None,)
    assert table.validators("aten.grid_sampler_2d.default") == (None,)
    assert "torch.uint8" not in table.to_copy_dtypes and "torch.int32" in table.to_copy_dtypes


def _fake_compile(parameters: list[str]):
    """A function with the recorded signature of a Torch-TensorRT version's dynamo.compile."""
    names = [p for p in parameters if p != "**"]
    args = ", ".join(names[:2]) + ", *, " + ", ".join(f"{n}=None" for n in names[2:]) + ", **kwargs"
    namespace: dict = {}
    exec(f"def compile({args}): pass", namespace)  # noqa: S102 - builds a signature from recorded data
    return namespace["compile"]


@pytest.mark.parametrize("version,explicit_typing", [("2.8.0", True), ("2.13.0", False)])
def test_compile_settings_fit_both_torch_tensorrt_versions(table, tmp_path, version, explicit_typing):
    """2.8 (JetPack 6) needs use_explicit_typing=True; 2.13 has no such parameter and would ignore it."""
    recorded = table.compile_signatures[version]["dynamo.compile"]
    assert ("use_explicit_typing" in recorded) is explicit_typing
    assert ("enabled_precisions" in recorded) is (version == "2.8.0")
    settings = compile_settings(_fake_compile(recorded), torch.device("cuda:0"), tmp_path / "timing.bin")
    assert ("use_explicit_typing" in settings) is explicit_typing
    assert "enabled_precisions" not in settings  # asserts with explicit typing on 2.8-2.12
    assert set(settings) - {"use_explicit_typing"} <= set(recorded), "every argument is a named parameter"
    for name in ("arg_inputs", "device", "min_block_size", "timing_cache_path"):
        assert name in recorded
    save = table.compile_signatures[version]["save"]
    assert {"output_format", "arg_inputs"} <= set(save)


# ------------------------------------------------------------------------------ int8 up to export
def test_int8_fake_quantization_calibrates_and_restores_on_cpu(tmp_path):
    """ModelOpt's int8 flow on the backend's module, as far as it goes on a CPU.

    Export itself needs CUDA: on CPU tensors ModelOpt 0.47 always takes its legacy fake-quant
    function, whose data-dependent branch (``if min_amax < 0``) torch.export cannot trace; on CUDA
    it emits ``tensorrt::quantize_op``, which Torch-TensorRT converts (the GPU check exports it).
    """
    mto = pytest.importorskip("modelopt.torch.opt", reason="needs nvidia-modelopt")
    from modelopt.torch.quantization.nn import TensorQuantizer

    from rtseg_ros.engines.tensorrt_engine import quantization_config, quantize_head

    torch.manual_seed(0)
    model = build_model("mfaranet", 19, (2,)).eval()
    frames = [torch.randn(1, 3, 64, 128) for _ in range(2)]
    head = tensorrt_head(model, (64, 128), True)
    quantize_head(head, frames, quantization_config())
    quantizers = [q for _, q in head.named_modules() if isinstance(q, TensorQuantizer) and q.is_enabled]
    assert quantizers and all(q.amax is not None for q in quantizers)
    assert "tensorrt.quantize_op.default" in load_table().converters

    mto.save(head, str(tmp_path / "quantizers.pt"))
    restored = mto.restore(tensorrt_head(model, (64, 128), True), str(tmp_path / "quantizers.pt"))
    with torch.no_grad():
        a, b = head(frames[0]), restored(frames[0])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
