"""compile backend (torch.compile, inductor): agrees with eager PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

from rtseg_ros.datasets.synthetic import make_scene
from rtseg_ros.engines import Segmenter, SegmenterConfig


@pytest.mark.slow
def test_compiled_labels_and_confidence_match_eager(reference_dir, tmp_path):
    # Inductor compiles for tens of seconds on 2 cores; one small ATONet head keeps it bounded.
    settings = dict(model="atonet", weights=str(reference_dir / "atonet_official_random_fp16.pt"),
                    input_height=64, input_width=128, output_resolution="network", cache_dir=str(tmp_path))
    eager = Segmenter(SegmenterConfig(backend="torch", **settings))
    compiled = Segmenter(SegmenterConfig(backend="compile", **settings))
    for seed in (0, 1):
        frame = make_scene(seed, 96, 200)[0]
        ours = compiled.segment(frame, color_order="rgb", want_confidence=True)
        expected = eager.segment(frame, color_order="rgb", want_confidence=True)
        assert ours.labels.shape == (64, 128) and ours.labels.dtype == np.uint8
        assert (ours.labels == expected.labels).mean() > 0.999
        np.testing.assert_allclose(ours.confidence, expected.confidence, atol=1e-4)
    assert compiled.engine.describe()["compile_mode"] == "default"
