"""Reference models, dataset loaders and the data sources a user names (image folders, npz, idx, text, factories)."""

from autocomp.refs import import_reference
from autocomp.zoo.data import DATASETS, Splits, load_cifar10, load_mnist
from autocomp.zoo.models import MODELS, DenseNetMini, LeNet5, LeNet300, ResNet20, build_model
from autocomp.zoo.sources import (
    SOURCE_OPTIONS,
    load_dataset,
    load_factory,
    load_idx,
    load_imagefolder,
    load_npz,
    load_text,
    register_source,
    source_options,
)
from autocomp.zoo.train import train_baseline

__all__ = ["DATASETS", "MODELS", "SOURCE_OPTIONS", "DenseNetMini", "LeNet300", "LeNet5", "ResNet20", "Splits",
           "build_model", "import_reference", "load_cifar10", "load_dataset", "load_factory", "load_idx",
           "load_imagefolder", "load_mnist", "load_npz", "load_text", "register_source", "source_options",
           "train_baseline"]
