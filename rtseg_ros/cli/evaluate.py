"""``rtseg make-bag`` and ``rtseg eval``: data set splits to bags, and accuracy/latency reports."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import yaml

from rtseg_ros.cli.options import ALL_SCALES_TEXT, parse_scales, parse_size
from rtseg_ros.datasets import DATASET_NAMES
from rtseg_ros.engines.config import SegmenterConfig
from rtseg_ros.io.bags import STORAGES
from rtseg_ros.names import BACKENDS, LABEL_SET_NAMES, MODEL_NAMES, OUTPUT_RESOLUTIONS, PRECISIONS, SIZE_MULTIPLE

LABEL_SET_HELP = f"{' or '.join(LABEL_SET_NAMES)}, or the path of a label set YAML file (docs/own-classes.md)"

LOG = logging.getLogger(__name__)
CONTEXT = {"help_option_names": ["-h", "--help"]}


def _parse_input_size(value: str) -> tuple[int, int] | None:
    """``HEIGHTxWIDTH``, or ``full`` (None): evaluate every frame at its own size."""
    return None if value.lower() == "full" else parse_size(value)


def _load_label_map(path: str | None) -> dict[int, int] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text())
        return {int(k): int(v) for k, v in data.items()}
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
        raise click.BadParameter(f"{path}: expected a YAML mapping of mask value to train id ({exc})") from None


def _dataset_options(func: Any) -> Any:
    for option in reversed([
        click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Data set layout of --root."),
        click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Data set root folder."),
        click.option("--split", default="val", show_default=True, help="Split to read (e.g. val, test)."),
        click.option("--label-map", type=click.Path(dir_okay=False, exists=True),
                     help="For --dataset folder: YAML {mask value: train id}; other values become 255."),
    ]):
        func = option(func)
    return func


@click.command(context_settings=CONTEXT)
@_dataset_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bag folder to create.")
@click.option("--storage", type=click.Choice(list(STORAGES)), default="mcap", show_default=True)
@click.option("--rate", "rate_hz", type=click.FloatRange(min=0.001), default=10.0, show_default=True,
              help="Frame rate the stamps are spaced at (Hz).")
@click.option("--limit", type=click.IntRange(min=1), help="Write only the first N frames.")
@click.option("--label-set", help=f"Classes of the masks, recorded in the bag: {LABEL_SET_HELP}. Default: the "
              "data set's own (for --dataset folder: none recorded). A file's label_ids map the --dataset folder "
              "masks unless --label-map is given.")
@click.option("--synthetic", "synthetic", type=click.IntRange(min=1), metavar="N",
              help="Instead of a data set: N synthetic street scenes with exact ground truth (no download; "
                   "--label-set cityscapes or camvid), scenes no training recipe draws from.")
@click.option("--synthetic-size", default="256x512", show_default=True, metavar="HxW",
              help="With --synthetic: the scenes' HEIGHTxWIDTH.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def make_bag(dataset: str | None, root: Path | None, split: str, label_map: str | None, out: Path, storage: str,
             rate_hz: float, limit: int | None, label_set: str | None, synthetic: int | None, synthetic_size: str,
             progress: bool) -> None:
    """Turn a data set split (or synthetic scenes) into a rosbag2 with ground truth.

    Topics: /camera/image_raw (rgb8), /camera/camera_info, /ground_truth/labels (mono8 train ids,
    same stamp as the image) and /ground_truth/file_name (std_msgs/String, the image path relative to
    --root). Frames are streamed one at a time.

    \b
    Examples:
      rtseg make-bag --synthetic 8 --out synthetic_bag
      rtseg make-bag --dataset cityscapes --root ~/data/cityscapes --split val --out val_bag
    """
    from rtseg_ros.datasets import DatasetError
    from rtseg_ros.evaluation.sources import make_dataset_bag
    from rtseg_ros.io.bags import BagError

    if synthetic is not None:
        if dataset is not None or root is not None:
            raise click.UsageError("--synthetic makes its own scenes; it does not go with --dataset/--root")
        _make_synthetic_bag(synthetic, parse_size(synthetic_size), label_set or "cityscapes", out, storage,
                            rate_hz)
        return
    if dataset is None or root is None:
        raise click.UsageError("make-bag needs --dataset and --root (or --synthetic N)")
    try:
        labels = _label_set_option(label_set)
        summary = make_dataset_bag(dataset, root, split, out, storage=storage, rate_hz=rate_hz, limit=limit,
                                   label_map=_mask_map(label_map, dataset, labels), progress=progress,
                                   label_set=labels)
    except (DatasetError, BagError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {summary['frames']} frames to {out} ({storage}); skipped {summary['skipped']} unreadable, "
               f"{summary['without_ground_truth']} without ground truth")


def _make_synthetic_bag(count: int, size: tuple[int, int], label_set: str, out: Path, storage: str,
                        rate_hz: float) -> None:
    """``count`` held-out synthetic scenes with ground truth in ``label_set`` as a bag at ``out``."""
    from rtseg_ros.datasets.synthetic import SYNTHETIC_LABEL_SETS, held_out_scenes
    from rtseg_ros.io.bags import CUSTOM_DATASET, CUSTOM_LABEL_SET, BagError, write_frames

    if label_set not in SYNTHETIC_LABEL_SETS:
        raise click.BadParameter(f"synthetic scenes come in {' or '.join(SYNTHETIC_LABEL_SETS)} classes, "
                                 f"not {label_set!r}", param_hint="--label-set")
    try:
        frames = write_frames(out, held_out_scenes(count, label_set, *size), storage,
                              period_ns=int(round(1e9 / rate_hz)),
                              custom_data={CUSTOM_DATASET: "synthetic", CUSTOM_LABEL_SET: label_set})
    except (BagError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {frames} synthetic {size[0]}x{size[1]} scenes with {label_set} ground truth to {out} "
               f"({storage})")


@click.command(context_settings=CONTEXT)
@click.argument("bag", required=False, type=click.Path(path_type=Path))
@_dataset_options
@click.option("--model", type=click.Choice(MODEL_NAMES), default=None,
              help=f"Network. Default: the one the checkpoint records, else {SegmenterConfig.model}.")
@click.option("--weights", help="Checkpoint: a path, a file name in the models folders or the user cache, or a "
              "models/manifest.yaml entry (e.g. synthetic_toy); without it the weights are random.")
@click.option("--label-set",
              help=f"Classes of the ground truth and the weights: {LABEL_SET_HELP}. Default: the data set's own, "
                   "else the one make-bag recorded in the bag, else the one the checkpoint records, else cityscapes. "
                   "A checkpoint recording other classes is refused.")
@click.option("--backend", type=click.Choice(BACKENDS), default=SegmenterConfig.backend, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=SegmenterConfig.precision, show_default=True)
@click.option("--device", default=SegmenterConfig.device, show_default=True,
              help="cpu, cuda or cuda:N; gpu, gpu.N or npu for an Intel GPU/NPU (openvino backend).")
@click.option("--calibration-data", type=click.Path(exists=True), default=None,
              help="int8: frames to calibrate on (a folder of images, a video or a rosbag2).")
@click.option("--calibration-frames", type=click.IntRange(min=1), default=SegmenterConfig.calibration_frames,
              show_default=True, help="int8: how many frames of --calibration-data to calibrate on.")
@click.option("--scales", default=ALL_SCALES_TEXT, show_default=True,
              help=f"MFARANet scales fused (subset of {ALL_SCALES_TEXT}).")
@click.option("--input-size", default="512x1024", show_default=True,
              help="Network input HEIGHTxWIDTH, or 'full' for the frames' own size (paper-style validation).")
@click.option("--output-resolution", type=click.Choice(OUTPUT_RESOLUTIONS), default=SegmenterConfig.output_resolution,
              show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Report JSON; the Markdown summary, heatmap, overlays and per-frame log go next to it.")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write each prediction as a PNG (Cityscapes: label ids named for the test server).")
@click.option("--overlays", type=click.IntRange(min=0), default=4, show_default=True,
              help="How many prediction/ground-truth overlay pictures to save.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after N frames.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--live", is_flag=True, help="Play BAG over DDS to a segmentation node and score what it publishes.")
@click.option("--rate-factor", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Live: playback speed relative to the bag's own timing.")
@click.option("--start-node/--no-start-node", default=True, show_default=True,
              help="Live: start segmentation_node as a subprocess, or talk to one already running.")
@click.option("--namespace", default="", help="Live: namespace of a running node's topics (e.g. /robot1).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0), default=120.0, show_default=True,
              help="Live: seconds to wait for the node to come up.")
@click.option("--max-in-flight", type=click.IntRange(min=1),
              help="Live: never more than N frames awaiting the node's output (1: lockstep, so a slow node "
                   "drops none and the scores equal an offline run's); default: the bag's timing alone.")
def evaluate(bag: Path | None, dataset: str | None, root: Path | None, split: str, label_map: str | None,
             model: str | None, weights: str | None, label_set: str | None, backend: str, precision: str, device: str,
             calibration_data: str | None, calibration_frames: int, scales: str, input_size: str, output_resolution: str, json_path: Path, export_dir: Path | None,
             overlays: int, max_frames: int | None, progress: bool, live: bool, rate_factor: float,
             start_node: bool, namespace: str, timeout_s: float, max_in_flight: int | None) -> None:
    """Accuracy (mIoU, per-class IoU, pixel accuracy) and latency of a model on a bag or a data set.

    \b
    rtseg eval BAG --model M --weights W --json report.json            ground truth from the bag
    rtseg eval BAG --dataset cityscapes --root DIR --split val ...     ground truth from the folder,
                                                                       matched by recorded file name
    rtseg eval --dataset cityscapes --root DIR --split val --input-size full ...   no bag
    rtseg eval BAG --live --rate-factor 1 ...                          through a running node over DDS
                                                                       (--dataset/--root: folder ground truth)
    torchrun --nproc_per_node=N $(which rtseg) eval ...               N processes share the frames (one GPU
                                                                       each with --device cuda); same scores

    A truncated or damaged bag is scored on the frames before the damage; the report's
    source.damage says where the damage is and how many frames were recovered and lost.
    """
    from rtseg_ros.datasets import DatasetError
    from rtseg_ros.evaluation.sources import (
        BagSource,
        DatasetGroundTruth,
        DatasetSource,
    )
    from rtseg_ros.io.bags import BagError

    if bag is None and (dataset is None or root is None):
        raise click.UsageError("give a BAG, or --dataset and --root (or both: ground truth from the folder)")
    if (dataset is None) != (root is None):
        raise click.UsageError("--dataset and --root go together")
    if live and bag is None:
        raise click.UsageError("--live plays a BAG; make one with rtseg make-bag")
    if max_in_flight is not None and not live:
        raise click.UsageError("--max-in-flight paces live playback; add --live")
    try:
        weights, model = _weights_and_model(weights, model)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    context = _join_processes(device, live)
    device = _process_device(device, context)
    main = context.is_main
    try:
        labels = _evaluation_label_set(label_set, bag, dataset, weights, json_path)
    except (BagError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if weights is None and main:
        click.secho(f"WARNING: no --weights given: {model} runs with RANDOM weights, the scores are meaningless "
                    "except as a pipeline check", fg="red", bold=True, err=True)
    size = _parse_input_size(input_size)
    mapping = _mask_map(label_map, dataset, labels)
    try:
        truth = DatasetGroundTruth(dataset, root, split, mapping) if bag is not None and dataset else None

        def make_source() -> Any:
            if bag is not None:
                return BagSource(bag, truth)
            return DatasetSource(dataset, root, split, mapping)

        source = make_source()
        if size is None:
            size = _frame_size(make_source())
        config = SegmenterConfig(model=model, weights=weights, label_set=labels.source, input_height=size[0],
                                 input_width=size[1], scales=parse_scales(scales), backend=backend,
                                 precision=precision, device=device, output_resolution=output_resolution,
                                 calibration_data=calibration_data, calibration_frames=calibration_frames)
        settings = config.to_settings(weights_sha256=_weights_hash(weights))
        if live:
            report = _evaluate_live(bag, labels, settings, json_path, rate_factor, start_node, namespace, timeout_s,
                                    max_frames, overlays, progress, truth, max_in_flight)
        else:
            report = _evaluate_in_process(source, labels, config, settings, json_path, export_dir, overlays,
                                          max_frames, progress, mode="bag" if bag is not None else "dataset",
                                          context=context)
    except (DatasetError, BagError) as exc:
        raise click.ClickException(str(exc)) from exc
    if main:
        _print_summary(report, json_path)


def _join_processes(device: str, live: bool) -> Any:
    """This process's place among those torchrun started (a single one without torchrun's variables)."""
    import os

    from rtseg_ros.distributed import DistributedContext, close_distributed, init_distributed

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return DistributedContext()
    if live:
        raise click.UsageError("--live plays one bag to one node; run it without torchrun")
    try:
        context = init_distributed("cuda" if device.startswith("cuda") else "cpu")
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"cannot join the torchrun processes: {exc}") from exc
    # Left when the command ends, whether it succeeds or fails.
    click.get_current_context().call_on_close(lambda: close_distributed(context))
    return context


def _process_device(device: str, context: Any) -> str:
    """A bare ``cuda`` becomes the GPU of this process's local rank when torchrun started several."""
    return f"cuda:{context.local_rank}" if context.distributed and device == "cuda" else device


def _label_set_option(reference: str | None) -> Any:
    """The LabelSet a --label-set option names (``None`` when not given)."""
    from rtseg_ros.datasets.labels import LabelSetError, get_label_set

    if not reference:
        return None
    try:
        return get_label_set(reference)
    except LabelSetError as exc:
        raise click.BadParameter(str(exc), param_hint="--label-set") from None


def _mask_map(label_map: str | None, dataset: str | None, labels: Any) -> dict[int, int] | None:
    """--label-map, else for a folder data set the label set file's label_ids map (if it has one)."""
    mapping = _load_label_map(label_map)
    if mapping is None and dataset == "folder" and labels is not None:
        mapping = labels.folder_label_map()
    return mapping


def _evaluation_label_set(reference: str | None, bag: Path | None, dataset: str | None, weights: str | None,
                          json_path: Path) -> Any:
    """The classes scored: --label-set, else the data set's own, else the one make-bag recorded in the bag,
    else the checkpoint's, else cityscapes; a checkpoint recording other classes is refused.

    Its ``source`` is what the segmenter (and a live node) is told: a built-in name, a file path, or
    empty for the checkpoint's. A set recorded whole in a bag is written next to the report to be told.
    """
    from rtseg_ros.datasets.labels import get_label_set
    from rtseg_ros.engines.config import SegmenterConfig

    truth = _label_set_option(reference) or _recorded_label_set(bag, dataset)
    if truth is not None and not truth.source:
        from rtseg_ros.io.files import atomic_output

        path = json_path.with_name(f"{json_path.stem}.label_set.yaml")
        with atomic_output(path) as tmp:  # atomic: several torchrun processes may write it
            tmp.write_text(yaml.safe_dump(truth.to_dict(), sort_keys=False))
        truth = get_label_set(str(path))
    # Reads the checkpoint's set: the one scored when nothing else says, and checked against truth.
    served = SegmenterConfig(label_set=truth.source if truth else "", weights=weights).resolved_label_set()
    return truth or served


def _recorded_label_set(bag: Path | None, dataset: str | None) -> Any:
    """The data set's own label set, else the one make-bag recorded in the bag, else ``None``."""
    import json

    from rtseg_ros.datasets import get_dataset_reader
    from rtseg_ros.datasets.labels import LabelSet, get_label_set
    from rtseg_ros.io.bags import CUSTOM_LABEL_SET, CUSTOM_LABEL_SET_DEFINITION, bag_custom_data

    if dataset and get_dataset_reader(dataset).LABEL_SET:
        return get_label_set(get_dataset_reader(dataset).LABEL_SET)
    if bag is not None and bag.exists():
        custom = bag_custom_data(bag)
        definition = custom.get(CUSTOM_LABEL_SET_DEFINITION)
        if definition:
            return LabelSet.from_dict(json.loads(definition), default_name=custom.get(CUSTOM_LABEL_SET, "bag"))
        if custom.get(CUSTOM_LABEL_SET):
            return get_label_set(custom[CUSTOM_LABEL_SET])
    return None


def _weights_and_model(weights: str | None, model: str | None) -> tuple[str | None, str]:
    """``--weights`` as the file it names (the one resolver the node uses too) and the network to run:
    ``--model``, else the one the checkpoint records, else the default.

    Raises:
        ValueError: no such weights file (the message lists where it looked), or an unreadable checkpoint.
    """
    from rtseg_ros.engines.config import weights_file

    path = weights_file(weights)
    if model is None and path is not None:
        from rtseg_ros.nets.checkpoint import read_checkpoint_info

        recorded = read_checkpoint_info(path).get("model")
        model = recorded if recorded in MODEL_NAMES else None
    return (str(path) if path is not None else None), (model or SegmenterConfig.model)


def _weights_hash(weights: str | None) -> str | None:
    if weights is None or not Path(weights).is_file():
        return None
    from rtseg_ros.nets.checkpoint import weights_hash

    return weights_hash(weights)


def _frame_size(source: Any) -> tuple[int, int]:
    """The first readable frame's size, rounded up to the networks' size multiple."""
    from rtseg_ros.skips import SkipTally

    # A look ahead only: what it skips is counted again, in the evaluation's own tally, by the run.
    for frame in source.frames(SkipTally()):
        height, width = frame.image.shape[:2]
        return (-(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE, -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    raise click.ClickException("no readable frame to take --input-size full from")


def _evaluate_in_process(source: Any, labels: Any, config: Any, settings: dict[str, Any], json_path: Path,
                         export_dir: Path | None, overlays: int, max_frames: int | None, progress: bool,
                         mode: str, context: Any = None) -> dict[str, Any]:
    """Score ``config``'s Segmenter in this process (its share of the frames when ``context`` is one of
    several processes); ``settings`` is its report block (:meth:`to_settings`)."""
    from rtseg_ros.engines import ConfigError, Segmenter
    from rtseg_ros.evaluation.evaluator import SegmenterPredictor, run_evaluation

    try:
        segmenter = Segmenter(config)
        segmenter.warmup()
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(f"cannot build the segmenter: {exc}") from exc
    header = {"mode": mode, "model": settings}
    return run_evaluation(source, SegmenterPredictor(segmenter), labels, header=header, json_path=json_path,
                          export_dir=export_dir, overlays=overlays, max_frames=max_frames, progress=progress,
                          distributed=context)


def _evaluate_live(bag: Path, labels: Any, settings: dict[str, Any], json_path: Path, rate_factor: float,
                   start_node: bool, namespace: str, timeout_s: float, max_frames: int | None, overlays: int,
                   progress: bool, ground_truth: Any = None, max_in_flight: int | None = None) -> dict[str, Any]:
    try:
        from rtseg_ros.ros.live_evaluation import LiveOptions, run_live_evaluation
    except ImportError as exc:
        raise click.ClickException(f"live mode needs rclpy and sensor_msgs (pip install 'rtseg_ros[ros]'): {exc}")
    options = LiveOptions(rate_factor=rate_factor, start_node=start_node, namespace=namespace,
                          startup_timeout_s=timeout_s, max_frames=max_frames, overlays=overlays, progress=progress,
                          max_in_flight=max_in_flight)
    try:
        return run_live_evaluation(bag, labels, settings, json_path, options, ground_truth)
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc


def _print_summary(report: dict[str, Any], json_path: Path) -> None:
    def pct(value: Any) -> str:
        return "n/a" if value is None or value != value else f"{value * 100:.2f}%"

    latency = report.get("latency_ms") or {}
    click.echo(f"frames scored {report['frames']} of {report['frames_read']} read; "
               f"mIoU {pct(report['miou'])}, pixel accuracy {pct(report['pixel_accuracy'])}")
    if latency.get("p50") is not None:
        click.echo(f"latency p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms")
    live = report.get("live")
    if live:
        click.echo(f"live: {live['received']} of {live['published']} frames came back, {live['dropped']} dropped, "
                   f"{live['output_fps']:.2f} frames/s out")
    if report.get("skipped"):
        click.echo("skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(report["skipped"].items())))
    damage = (report.get("source") or {}).get("damage")
    if damage:
        where = damage["file"] or damage["storage"]
        if damage["offset"] is not None:
            where += f" at byte {damage['offset']}"
        lost = "unknown" if damage["frames_lost"] is None else damage["frames_lost"]
        click.echo(f"bag damaged in {where} ({damage['reason']}): scored the {damage['frames_recovered']} frames "
                   f"before the damage; frames lost: {lost}")
    distributed = report.get("distributed")
    if distributed:
        click.echo(f"{distributed['world_size']} processes ({distributed['backend']}) shared the frames")
    click.echo(f"report: {json_path}")
