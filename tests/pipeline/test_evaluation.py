from __future__ import annotations

import numpy as np

from cascade.data.discovery import scan_cases
from cascade.data.labels import DEFAULT_SCHEME
from cascade.data.nifti import read_volume
from cascade.inference.cascade import Prediction
from cascade.inference.postprocess import keep_largest_tumor
from cascade.metrics import case_metrics
from cascade.pipeline.evaluation import evaluate_cases


class FixedPrediction:
    """A predictor that returns one prediction and keeps the largest tumor component, as a run
    with `postprocessing.largest_tumor_component` does."""

    def __init__(self, prediction: Prediction) -> None:
        self.prediction = prediction

    def predict(self, case) -> Prediction:
        return self.prediction

    def postprocess(self, classes: np.ndarray) -> np.ndarray:
        return keep_largest_tumor(classes, DEFAULT_SCHEME.regions["wt"])


def test_stage1_is_scored_after_the_same_post_processing_as_the_cascade(tmp_path, write_case):
    paths = write_case()
    (case,), errors = scan_cases(tmp_path)
    assert not errors
    truth = DEFAULT_SCHEME.to_classes(read_volume(paths["label"])[1])
    # Stage 1 found the tumor and a smaller stray blob in a corner; the cascade only the tumor
    stage1 = truth.copy()
    stage1[:3, :3, :3] = 2
    prediction = Prediction(truth, truth, stage1, None, {"total": 0.0}, None)

    (row,) = evaluate_cases(FixedPrediction(prediction), [case], None, 0)

    spacing, regions = (1.0, 1.0, 1.0), DEFAULT_SCHEME.regions
    assert case_metrics(stage1, truth, spacing, regions)["dice_wt"] < 0.99  # the blob counts raw
    assert row["stage1_dice_wt"] == row["dice_wt"] == 1.0
