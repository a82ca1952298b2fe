"""Offline datasets for tests and experiments.

Everything here loads without network access: the generated task of Maile et al. (2022), whose
effective dimension is known exactly and so checks growth triggers; MNIST read from the official IDX
files in a local directory; Fashion-MNIST's official split from Debian's package (or any folder); and scikit-learn's bundled 8x8 digits.  CIFAR-10/100 go through
torchvision, from local files or (when asked) a download. Each loader is seeded explicitly,
so a test or an experiment gets the same split every run without touching the global RNG.
Every loader returns a :class:`DataSplit` of ``torch.utils.data.Dataset``s, read a batch at a time
by the runner's ``DataLoader``, so a split does not have to fit in memory.
"""

from archgrow.data.cifar import cifar
from archgrow.data.datasets import ByteImages, MapInputs
from archgrow.data.digits import digits
from archgrow.data.fashion_mnist import fashion_mnist
from archgrow.data.generated import generated
from archgrow.data.mnist import mnist, mnist_split
from archgrow.data.split import DataSplit

__all__ = ["ByteImages", "DataSplit", "MapInputs", "cifar", "digits", "fashion_mnist", "generated", "mnist", "mnist_split"]
