"""ECE: expected calibration error (Guo et al., 2017) with equal-width confidence bins over (0, 1]."""

import datasets
import evaluate
import torch

from mp_hub.errors import InvalidInputError
from mp_hub.metrics import expected_calibration_error

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
            features=datasets.Features(
                {"probabilities": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/1706.04599"],
        )

    def _compute(self, probabilities, references, n_bins=15):
        try:
            probs = torch.as_tensor(probabilities, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"probabilities must be an (N, C) array of floats: {err}") from err
        labels = torch.as_tensor(references, dtype=torch.long)
        return {"ece": expected_calibration_error(probs, labels, n_bins=n_bins)}
