"""The file MLflow runs to load the registered model ("models from code"): it only names the class
of the installed ``deepcovid`` package (:class:`deepcovid.model.mlflow_model.DeepCovidModel`).
No copy of the package is logged with the model, so loading it runs the code installed here, not
code stored in the artifact; this file's SHA-256 is recorded with the model (``loader_sha256``)."""

import mlflow.models

from deepcovid.model.mlflow_model import DeepCovidModel

mlflow.models.set_model(DeepCovidModel())
