"""Offline and live evaluation: accuracy, latency and skipped frames, as JSON, Markdown and pictures.

The core (sources, evaluator, reports, export, live bookkeeping) never imports rclpy; the DDS side of
live mode is ``rtseg_ros.ros.live_evaluation``.
"""
from rtseg_ros.evaluation.evaluator import Evaluation, Prediction, ReportWriter, SegmenterPredictor, run_evaluation
from rtseg_ros.evaluation.export import PredictionExporter
from rtseg_ros.evaluation.sources import BagSource, DatasetGroundTruth, DatasetSource, EvalFrame, make_dataset_bag

__all__ = [
    "BagSource", "DatasetGroundTruth", "DatasetSource", "EvalFrame", "Evaluation", "Prediction",
    "PredictionExporter", "ReportWriter", "SegmenterPredictor", "make_dataset_bag", "run_evaluation",
]
