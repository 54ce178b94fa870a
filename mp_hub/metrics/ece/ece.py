"""ECE: expected calibration error (Guo et al., 2017) with equal-width confidence bins over (0, 1]."""

import evaluate

from mp_hub.metrics import expected_calibration_error, probability_features, probability_inputs

_DESCRIPTION = (
    "ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over `n_bins` (default 15) equal-width bins of (0, 1]; "
    "confidence = max class probability, correct = argmax == reference; a confidence c goes to the bin with "
    "lower < c <= upper. The maths is `mp_hub.metrics.expected_calibration_error`."
)
_KWARGS_DESCRIPTION = """
Args:
    probabilities (`list` of `list` of `float`): per-example class probabilities, shape (N, C).
    references (`list` of `int`): true class ids.
    n_bins (`int`, optional, default 15): number of equal-width confidence bins.
Returns:
    ece (`float`): in [0, 1].
Example:
    >>> ece = evaluate.load("mp_hub/metrics/ece")
    >>> ece.compute(probabilities=[[0.25, 0.75], [0.9, 0.1]], references=[1, 1])
    {'ece': 0.575}
"""
_CITATION = """
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={ICML},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ece(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=probability_features(),
            reference_urls=["https://arxiv.org/abs/1706.04599"],
        )

    def _compute(self, probabilities, references, n_bins=15):
        probs, labels = probability_inputs(probabilities, references)
        return {"ece": expected_calibration_error(probs, labels, n_bins=n_bins)}
