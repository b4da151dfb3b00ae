"""The recommender as an MLflow pyfunc model: what the registry stores and serving loads.

The model files are ``FittedRecommender.save``'s folder (id mappings, confidence and seen
matrices, the pickled recommender, the recipe) logged as one pyfunc artifact, so the same
class answers in the batch job, in tests and behind the HTTP service.

    model = mlflow.pyfunc.load_model("models:/tailor-recommender@champion")
    model.predict(pd.DataFrame({"person_id": ["42"]}), params={"k": 5})
    model.unwrap_python_model().explain("42", "318")   # why item 318 for person 42
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature

from training.fitted import FittedRecommender

_ARTIFACT = "recommender"
_REQUIREMENTS = ("mlflow", "implicit", "numpy", "scipy", "pandas", "cloudpickle")


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """predict: person_id rows in, (person_id, item_id, rank, score) rows out; ``k`` param."""

    def __init__(self, fitted: FittedRecommender | None = None, k: int = 10):
        self.fitted = fitted
        self.k = k

    def load_context(self, context) -> None:
        self.fitted = FittedRecommender.load(context.artifacts[_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        k = int((params or {}).get("k", self.k))
        return self.fitted.recommend(model_input["person_id"].astype(str), k)

    def explain(self, person_id: str, item_id: str, n: int = 10) -> pd.DataFrame:
        """History items behind ``item_id``'s score for the person: (item_id, contribution)."""
        return self.fitted.explain(person_id, item_id, n)

    def __getstate__(self) -> dict:
        # The fitted model travels as the artifact folder, not inside the pickled instance.
        return {"k": self.k, "fitted": None}


def log_recommender(fitted: FittedRecommender, k: int, name: str = "model"):
    """Log ``fitted`` as a pyfunc model in the active run, with signature and input example."""
    example = pd.DataFrame({"person_id": [str(fitted.interactions.person_ids[0])]})
    output = RecommenderModel(fitted, k).predict(None, example)
    signature = infer_signature(example, output, params={"k": k})
    with tempfile.TemporaryDirectory() as tmp:
        fitted.save(Path(tmp) / _ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name, python_model=RecommenderModel(k=k),
            artifacts={_ARTIFACT: str(Path(tmp) / _ARTIFACT)},
            signature=signature, input_example=example,
            pip_requirements=[f"{package}=={version(package)}" for package in _REQUIREMENTS])
