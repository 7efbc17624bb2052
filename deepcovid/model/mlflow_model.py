"""The MLflow model the train stage logs and registers, defined in code (MLflow's "models from
code"): nothing in it is pickled. MLflow runs this file when the model is loaded; the weights
are a state_dict read with ``torch.load(weights_only=True)`` and the architecture and
preprocessing come from ``model.json``.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/deep-covid-efficientnet_lite0/latest")
    scores = model.predict(["xray.png", "study.dcm"])   # COVID-19 probabilities

Input: image file paths (a list, or a DataFrame whose first column holds them); each file is prepared
exactly as the pipeline prepares its own images (:func:`deepcovid.model.inference.prepare`).
Output: a DataFrame with the column ``score``. For research only: not for clinical diagnosis.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.models
import pandas as pd
from mlflow.pyfunc import PythonModel


class DeepCovidModel(PythonModel):
    def load_context(self, context) -> None:
        from deepcovid.model.weights import build_model

        self.record = json.loads(Path(context.artifacts["model_json"]).read_text(encoding="utf-8"))
        self.model, _ = build_model(self.record["architecture"], str(context.artifacts["state_dict"]),
                                    num_classes=len(self.record["classes"]))
        self.model.eval()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import torch

        from deepcovid.data.images import ImageReadError
        from deepcovid.model.inference import covid_probability, prepare

        def prepared(path):
            try:
                return prepare(path, self.record)
            except ImageReadError as exc:
                raise ValueError(f"{path}: {exc}") from None

        paths = list(model_input.iloc[:, 0]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        scores = []
        with torch.no_grad():
            for start in range(0, len(paths), 8):
                batch = torch.stack([prepared(p) for p in paths[start:start + 8]])
                scores.extend(covid_probability(self.model(batch)).tolist())
        return pd.DataFrame({"score": scores})


mlflow.models.set_model(DeepCovidModel())
