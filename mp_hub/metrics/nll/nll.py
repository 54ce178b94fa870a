"""NLL: mean negative log-likelihood of the reference class under the given class probabilities."""

import evaluate

from mp_hub.errors import InvalidInputError
from mp_hub.metrics import probability_features, probability_inputs

_EPS = 1e-12
_DESCRIPTION = (
    "Mean negative log-likelihood -log p(y_i | x_i) of the references, where `probabilities` are per-example "
    f"class probabilities (already averaged over MC samples), clamped at {_EPS} before the log."
)
_KWARGS_DESCRIPTION = """
Args:
    probabilities (`list` of `list` of `float`): per-example class probabilities, shape (N, C).
    references (`list` of `int`): true class ids.
Returns:
    nll (`float`): mean negative log-likelihood (natural log), >= 0.
Example:
    >>> nll = evaluate.load("mp_hub/metrics/nll")
    >>> nll.compute(probabilities=[[0.5, 0.5], [0.25, 0.75]], references=[0, 1])
    {'nll': 0.4904...}
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Nll(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=probability_features(),
        )

    def _compute(self, probabilities, references):
        probs, labels = probability_inputs(probabilities, references)
        if probs.ndim != 2 or probs.shape[0] == 0 or labels.shape != (probs.shape[0],):
            raise InvalidInputError(
                f"probabilities must be (N, C) with N >= 1 and references (N,), "
                f"got {tuple(probs.shape)} and {tuple(labels.shape)}"
            )
        if labels.min() < 0 or labels.max() >= probs.shape[1]:
            raise InvalidInputError(f"references must lie in [0, {probs.shape[1] - 1}], got {labels.tolist()}")
        picked = probs.gather(1, labels[:, None]).squeeze(1)
        return {"nll": float(-picked.clamp_min(_EPS).log().mean())}
