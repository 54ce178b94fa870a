"""The robustness tests' shared fixture: a tiny trained classifier with φ attached (see _toy_classifier.py)."""

import pytest
from _toy_classifier import train_toy_model


@pytest.fixture(scope="session")
def toy_model():
    return train_toy_model()
