"""Reference models and dataset loaders."""

from autocomp.zoo.data import DATASETS, Splits, load_dataset
from autocomp.zoo.models import MODELS, LeNet5, LeNet300, build_model
from autocomp.zoo.train import train_baseline

__all__ = ["DATASETS", "MODELS", "LeNet300", "LeNet5", "Splits", "build_model", "load_dataset", "train_baseline"]
