"""``rtseg demo``: run the segmentation node on a camera source and print live statistics."""
from __future__ import annotations

import signal
from pathlib import Path

import click

from rtseg_ros.cli.options import size_callback
from rtseg_ros.names import MODEL_NAMES
from rtseg_ros.ros.demo import DemoError, DemoSettings, run_demo


@click.command()
@click.option("--source", default="synthetic", show_default=True,
              help="'synthetic' street scenes, a folder of images, a video file or a rosbag2 folder.")
@click.option("--weights", default=None,
              help="Checkpoint: a path, a file name in the models folders or a models/manifest.yaml entry. "
                   "Default: synthetic_toy, the toy model shipped in models/ (ATONet on the synthetic scenes).")
@click.option("--retrain", is_flag=True,
              help="Train the toy model anew with the synthetic recipe (minutes on a CPU; Ctrl-C stops it, the "
                   "next --retrain continues) and run that one.")
@click.option("--untrained", is_flag=True,
              help="Run untrained random weights: the pipeline and its speed only.")
@click.option("--config", default="cpu.yaml", show_default=True,
              help="Node parameter file: a name in the package's config folder or a path.")
@click.option("--model", type=click.Choice(MODEL_NAMES), default=None,
              help="Override the config's (or the checkpoint's) model.")
@click.option("--input-size", callback=size_callback, default=None, metavar="HxW",
              help="Network input size, multiples of 32. Default: the config's.")
@click.option("--frame-size", callback=size_callback, default="256x512", show_default=True, metavar="HxW",
              help="Size of the synthetic camera frames.")
@click.option("--rate", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Camera rate (Hz).")
@click.option("--duration", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Seconds of camera after the node is up.")
@click.option("--bag-topic", default="/camera/image_raw", show_default=True, help="Image topic of a rosbag2 source.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("rtseg_demo"),
              show_default=True, help="Folder for overlay.png, overlay.mp4, node.log and summary.json.")
@click.option("--video", is_flag=True, help="Also write every overlay to overlay.mp4.")
def demo(source: str, weights: str | None, retrain: bool, untrained: bool, config: str, model: str | None,
         input_size: tuple[int, int] | None, frame_size: tuple[int, int], rate: float, duration: float,
         bag_topic: str, out_dir: Path, video: bool) -> None:
    """Run the segmentation node on a camera source and print live statistics.

    Without --weights it runs the toy model shipped in models/ (synthetic_toy); --retrain trains
    it anew first (into models/synthetic_toy.pth of $RTSEG_ROS_CACHE, else ~/.cache/rtseg_ros).

    The node runs in its own process and DDS stays on this host (unless ROS_AUTOMATIC_DISCOVERY_RANGE
    and FASTRTPS_DEFAULT_PROFILES_FILE are set already). Every second: camera and output rates,
    latency from frame stamp to labels, and the frames the node dropped to stay current.
    """
    if untrained and (weights or retrain):
        raise click.UsageError("--untrained runs random weights; leave out --weights and --retrain")
    if retrain and weights:
        raise click.UsageError("--retrain runs the toy model it trains; leave out --weights")
    # Ctrl-C stops the toy model's training or the camera cleanly (KeyboardInterrupt), also when the
    # demo was started with SIGINT ignored (a shell's `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Time to first labels counts from the rtseg command's start (its imports included).
    from rtseg_ros.cli import STARTED_MONOTONIC

    started_at = STARTED_MONOTONIC
    settings = DemoSettings(source=source, weights=weights, config=config, model=model, input_size=input_size,
                            frame_size=frame_size, rate_hz=rate, duration_s=duration, out_dir=out_dir,
                            video=video, bag_topic=bag_topic, untrained=untrained, retrain=retrain,
                            started_at=started_at)
    try:
        summary = run_demo(settings, echo=click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"published {summary.frames_published} frames, segmented {summary.frames_segmented}, "
        f"dropped by the node {summary.frames_dropped_by_node}; latency p50 {summary.latency_p50_ms:.0f} ms, "
        f"p95 {summary.latency_p95_ms:.0f} ms; first labels {summary.first_labels_since_demo_start_s:.1f} s after "
        f"`rtseg demo` started ({summary.first_labels_s:.1f} s after the node started)")
    if not summary.weights:
        click.echo("(the labels came from UNTRAINED random weights: they show speed, not segmentation)")
    if summary.overlay_png:
        click.echo(f"overlay: {summary.overlay_png}")
    if summary.side_by_side_png:
        click.echo(f"camera | labels | overlay: {summary.side_by_side_png}")
    if summary.overlay_video:
        click.echo(f"video:   {summary.overlay_video}")
    click.echo(f"summary: {out_dir / 'summary.json'}")
