"""The MLflow model the train stage logs and registers, defined in code (MLflow's "models from
code"): nothing in it is pickled. When the model is loaded MLflow runs the logged
:mod:`deepcovid.model.mlflow_loader`, which takes this class from the installed package; the
weights are a state_dict read with ``torch.load(weights_only=True)``, checked against the SHA-256
that ``model.json`` records, and the architecture and preprocessing come from ``model.json``.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/deep-covid-efficientnet_lite0/latest")
    scores = model.predict(["xray.png", "study.dcm"])   # COVID-19 probabilities

Input: image file paths (a list, or a DataFrame whose first column holds them); each file is prepared
exactly as the pipeline prepares its own images (:func:`deepcovid.model.inference.prepare`; a model
trained with ``preprocess.lungs`` crop or mask carries its lung segmenter, checked on loading).
Output: a DataFrame with the column ``score``. For research only: not for clinical diagnosis.
"""

from __future__ import annotations

import pandas as pd
from mlflow.pyfunc import PythonModel

from deepcovid.errors import InputError


class DeepCovidModel(PythonModel):
    def load_context(self, context) -> None:
        from deepcovid.model.inference import load_files

        # the state_dict must be the file model.json records (SHA-256), loaded as trained (no new head)
        self.model, self.record = load_files(context.artifacts["state_dict"], context.artifacts["model_json"])
        prep, self.segmenter = self.record["preprocessing"], None
        if prep.get("lungs", "none") != "none":  # the lung segmenter logged beside it, the one model.json names
            if "segmenter" not in context.artifacts:  # never scored without one
                raise InputError(
                    f"this model was trained on images with preprocess.lungs {prep['lungs']!r} and the MLflow model "
                    f"does not carry its lung segmenter: score with `deepcovid predict --models <the models folder>`"
                )
            from deepcovid.model.inference import segmenter_from

            self.segmenter = segmenter_from(context.artifacts["segmenter"], self.record)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from deepcovid.model.inference import score_files

        paths = list(model_input.iloc[:, 0]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        scores, errors = score_files(self.model, self.record, paths, batch_size=8, segmenter=self.segmenter)
        if errors:
            i = min(errors)
            raise InputError(f"{paths[i]}: {errors[i]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        return pd.DataFrame({"score": scores})
