"""Bundled LightningModules. They use only the documented protocols (see ``protocols``)."""

from lightning_critical.models.cnn import SmallCNN
from lightning_critical.models.factorization_ensemble import FactorizationEnsemble
from lightning_critical.models.matrix_factorization import DeepMatrixFactorization
from lightning_critical.models.multipathway import MultiPathwayLinearNet
from lightning_critical.models.two_view import TwoViewNet

__all__ = [
    "DeepMatrixFactorization",
    "FactorizationEnsemble",
    "MultiPathwayLinearNet",
    "SmallCNN",
    "TwoViewNet",
]
