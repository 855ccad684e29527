"""Reference models and dataset loaders."""

from autocomp.zoo.data import DATASETS, Splits, load_cifar10, load_dataset, load_mnist
from autocomp.zoo.models import MODELS, DenseNetMini, LeNet5, LeNet300, ResNet20, build_model
from autocomp.zoo.train import train_baseline

__all__ = ["DATASETS", "MODELS", "DenseNetMini", "LeNet300", "LeNet5", "ResNet20", "Splits", "build_model",
           "load_cifar10", "load_dataset", "load_mnist", "train_baseline"]
