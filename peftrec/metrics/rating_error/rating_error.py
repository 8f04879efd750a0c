"""Rating-prediction error: MSE, RMSE and MAE between predicted and true ratings."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Errors of predicted ratings against true ratings: mean squared error (`mse`), its square root
(`rmse`, the headline number of protocols P1 and P2) and mean absolute error (`mae`).
Inputs are stored as float32; the means are taken in float64.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): predicted ratings.
    references (`list[float]`): true ratings, same length.
Returns:
    dict with `mse`, `rmse` and `mae` (floats).
Example:
    >>> metric = peftrec.metrics.load_metric("rating_error")
    >>> metric.compute(predictions=[3.0, 4.0], references=[4.0, 4.0])
    {'mse': 0.5, 'rmse': 0.7071067811865476, 'mae': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RatingError(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float32"), "references": datasets.Value("float32")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("rating_error needs at least one prediction")
        error = np.asarray(predictions, dtype=np.float64) - np.asarray(references, dtype=np.float64)
        mse = float(np.mean(error**2))
        return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(error)))}
