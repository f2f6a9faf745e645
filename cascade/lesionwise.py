"""Lesion-wise BraTS evaluation (the BraTS 2023+ protocol) through panoptica.

Builds, from panoptica's own classes, the configuration of the official BraTS evaluation
package (BraTS_evaluation, glioma config) and reports its parser's per-case columns:
- label groups: the scheme's merged regions (WT = NETC+SNFH+ET, TC = NETC+ET, each merged into
  one label) and each tumour class alone: ET, NETC, SNFH, and RC where the scheme has it;
- lesions: the 26-connected components of each group (cc3d);
- matching: maximum bipartite matching on Dice; any overlap (Dice above 1e-6) can match;
- metrics: Dice, NSD and HD95 (pooled, see cascade.metrics) of each matched lesion pair, as
  their mean and population std over the matched pairs (lesion-wise), and of the whole group
  (global); the counts of matched (tp), unmatched predicted (fp) and unmatched reference (fn)
  lesions, with precision, recall and F1 of detection. panoptica's NSD is the mean of the two
  directed fractions of surface voxels within the tolerance of the other surface;
- edge cases: a group empty on both sides gives NaN (left out of the means); empty on one side,
  or without any overlap, gives Dice and NSD 0 and HD95 inf. The parser writes an infinite
  global HD95 as 373 but keeps an infinite lesion-wise HD95 mean, and so does this module.
Two properties of panoptica 2.1 carry over as they are: global metrics ignore the voxel spacing
(global HD95 in voxels, global NSD with a 0.5-voxel tolerance), while lesion metrics use it (NSD
tolerance: the smallest voxel spacing, 1 mm for BraTS). The official package reads files with
SimpleITK and pairs the spacing with the axes in reverse order; here each axis keeps its own
spacing, which gives the same numbers on isotropic data such as BraTS.

A case without a prediction scores as the parser scores one: 373 for every HD95 column except
standard deviations, 0 everywhere else.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from cascade.boxes import bounding_box, box_slices
from cascade.data.labels import LabelScheme
from cascade.evaluate import Scorer
from cascade.metrics import summarize, volume_keys

# The official groups of single classes, by class index (see cascade.data.labels), in column order.
CLASS_GROUP_NAMES = {3: "et", 1: "netc", 2: "snfh", 4: "rc"}

# The official parser's stand-in for an infinite HD95: the diagonal of the SRI24 volume, rounded.
OFFICIAL_HD95_MAX = 373.0

# The official Dice threshold of the bipartite matching: any overlap.
MATCHING_DICE_THRESHOLD = 1e-6

# Per-group columns in the official parser's order: (column prefix, panoptica result key).
_COLUMNS = (
    ("all_instance_tp", "tp"),
    ("all_instance_fp", "fp"),
    ("all_instance_fn", "fn"),
    ("all_instance_prec", "prec"),
    ("all_instance_rec", "rec"),
    ("all_instance_f1", "rq"),
    ("global_dsc", "global_bin_dsc"),
    ("global_nsd", "global_bin_nsd"),
    ("global_hd95", "global_bin_hd95"),
    ("lesionwise_dsc_mean", "sq_dsc"),
    ("lesionwise_dsc_std", "sq_dsc_std"),
    ("lesionwise_nsd_mean", "sq_nsd"),
    ("lesionwise_nsd_std", "sq_nsd_std"),
    ("lesionwise_hd95_mean", "sq_hd95"),
    ("lesionwise_hd95_std", "sq_hd95_std"),
)

# The statistic rows of the summary, named as the parser names its own three.
STATISTICS = ("mean", "std", "median", "ci_low", "ci_high")

INSTALL_HINT = "lesion-wise evaluation needs panoptica: pip install 'cascade[eval]'"


def lesion_groups(scheme: LabelScheme) -> dict[str, tuple[int, ...]]:
    """Official label groups of a scheme: {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,), ...}.

    The scheme's regions of several classes, then each of its tumour classes alone.
    """
    groups = {name: tuple(members) for name, members in scheme.regions.items() if len(members) > 1}
    for label_class, name in CLASS_GROUP_NAMES.items():
        if label_class < scheme.num_classes:
            groups[name] = (label_class,)
    return groups


def lesionwise_keys(groups: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
    """Per-case columns, group after group: all_instance_tp_wt ... lesionwise_hd95_std_wt, ..."""
    return tuple(f"{prefix}_{group}" for group in groups for prefix, _ in _COLUMNS)


def brats_evaluator(groups: Mapping[str, tuple[int, ...]]):
    """panoptica evaluator with the official BraTS settings for class maps of these groups."""
    try:
        from panoptica import (
            ConnectedComponentsInstanceApproximator,
            InputType,
            MaxBipartiteMatching,
            Metric,
            Panoptica_Evaluator,
        )
        from panoptica.utils import (
            EdgeCaseHandler,
            EdgeCaseResult,
            LabelGroup,
            LabelMergeGroup,
            SegmentationClassGroups,
        )
        from panoptica.utils.citation_reminder import disable_citation_reminder
        from panoptica.utils.edge_case_handling import MetricZeroTPEdgeCaseHandling
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error

    def zero_tp(result):
        # A group empty on both sides is undefined (NaN); every other lesion-free match scores
        # `result`.
        return MetricZeroTPEdgeCaseHandling(
            empty_prediction_result=result,
            empty_reference_result=result,
            no_instances_result=EdgeCaseResult.NAN,
            normal=result,
        )

    # Overlapping groups (WT holds ET) are intended; panoptica prints a question about them.
    with contextlib.redirect_stdout(io.StringIO()):
        class_groups = SegmentationClassGroups(
            {
                name: LabelMergeGroup(list(members)) if len(members) > 1 else LabelGroup(members[0])
                for name, members in groups.items()
            }
        )
    metrics = [Metric.DSC, Metric.NSD, Metric.HD95]
    # The console banner asking to cite panoptica would split the table; the printed summary
    # names panoptica instead.
    disable_citation_reminder()
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(
            matching_metric=Metric.DSC, matching_threshold=MATCHING_DICE_THRESHOLD
        ),
        edge_case_handler=EdgeCaseHandler(
            listmetric_zeroTP_handling={
                Metric.DSC: zero_tp(EdgeCaseResult.ZERO),
                Metric.NSD: zero_tp(EdgeCaseResult.ZERO),
                Metric.HD95: zero_tp(EdgeCaseResult.INF),
            },
            empty_list_std=EdgeCaseResult.NAN,
        ),
        segmentation_class_groups=class_groups,
        instance_metrics=metrics,
        global_metrics=metrics,
    )


def _number(value) -> float:
    return math.nan if value is None else float(value)


def lesionwise_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    groups: Mapping[str, tuple[int, ...]],
    evaluator=None,
) -> dict[str, float]:
    """Official lesion-wise columns (lesionwise_keys(groups)) of one case: class maps (X, Y, Z),
    spacing in mm per axis. Pass `evaluator` (brats_evaluator(groups)) to reuse it across cases.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} != truth shape {truth.shape}")
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {prediction.ndim} dimensions")
    evaluator = evaluator if evaluator is not None else brats_evaluator(groups)
    # The tumour's bounding box plus one background voxel holds every lesion and surface, so
    # the numbers are those of the whole volume, about 3x faster on a BraTS case.
    foreground = (prediction > 0) | (truth > 0)
    box = box_slices(bounding_box(foreground, margin=1) or ((0, 1),) * truth.ndim)
    with warnings.catch_warnings():
        # panoptica warns that the global NSD's tolerance is its 0.5 default: the official value
        warnings.filterwarnings("ignore", message="The threshold is set to 0.5")
        results = evaluator.evaluate(
            np.ascontiguousarray(prediction[box], dtype=np.uint8),
            np.ascontiguousarray(truth[box], dtype=np.uint8),
            voxelspacing=tuple(float(s) for s in spacing),
        )
    row: dict[str, float] = {}
    for group in groups:
        values = results[group].to_dict()
        for prefix, key in _COLUMNS:
            row[f"{prefix}_{group}"] = _number(values.get(key))
        if math.isinf(row[f"global_hd95_{group}"]):
            row[f"global_hd95_{group}"] = OFFICIAL_HD95_MAX
    return row


def missing_prediction_lesionwise(groups: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """The columns of a case without a prediction, as the official parser fills them."""
    return {
        key: OFFICIAL_HD95_MAX if "hd95" in key and "std" not in key else 0.0
        for key in lesionwise_keys(groups)
    }


class LesionwiseScorer(Scorer):
    """Scores cases of one scheme with the lesion-wise protocol, plus each group's volumes."""

    id_column = "subject_id"
    hd95_convention = "pooled"

    def __init__(self, scheme: LabelScheme) -> None:
        self.groups = self.regions = lesion_groups(scheme)
        self.evaluator = brats_evaluator(self.groups)
        self.keys = (*lesionwise_keys(self.groups), *volume_keys(self.groups))

    def metrics(
        self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
    ) -> dict[str, float]:
        return lesionwise_metrics(prediction, truth, spacing, self.groups, self.evaluator)

    def worst_case(self) -> dict[str, float]:
        return missing_prediction_lesionwise(self.groups)

    def summary(self, rows: Sequence[dict]) -> tuple[dict, tuple[str, ...], list[dict]]:
        """(stats by column, summary CSV columns, summary CSV rows: the official parser's
        "mean", "std", "median" rows, then "ci_low", "ci_high")."""
        summary, table = statistic_rows(rows, self.id_column)
        return summary, (self.id_column, *self.keys), table

    def table(self, summary: dict[str, dict[str, float]], cases: int) -> str:
        return format_table(summary, cases, tuple(self.groups))


def statistic_rows(
    rows: Sequence[dict], id_column: str = "subject_id"
) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Summary of the per-case rows: (summarize's stats by column, and the same as the official
    parser's rows "mean", "std", "median", then "ci_low", "ci_high", keyed by column)."""
    summary = summarize([{k: v for k, v in row.items() if k != id_column} for row in rows])
    table = [
        {id_column: statistic, **{key: stats[statistic] for key, stats in summary.items()}}
        for statistic in STATISTICS
    ]
    return summary, table


def format_table(summary: dict[str, dict[str, float]], cases: int, groups: Sequence[str]) -> str:
    """Lesion-wise Dice, HD95 and detection F1, and global Dice, per group: means over cases."""
    lines = [
        f"{cases} cases; lesion-wise mean [95% bootstrap CI of the mean] (panoptica, BraTS config)",
        f"{'group':<7}{'lesion Dice':<28}{'lesion HD95':<14}{'F1':<8}{'global Dice':<12}",
    ]
    for group in groups:
        dice = summary[f"lesionwise_dsc_mean_{group}"]
        dice_text = f"{dice['mean']:.4f} [{dice['ci_low']:.4f}, {dice['ci_high']:.4f}]"
        lines.append(
            f"{group.upper():<7}{dice_text:<28}"
            f"{summary[f'lesionwise_hd95_mean_{group}']['mean']:<14.2f}"
            f"{summary[f'all_instance_f1_{group}']['mean']:<8.4f}"
            f"{summary[f'global_dsc_{group}']['mean']:<12.4f}"
        )
    return "\n".join(lines)
