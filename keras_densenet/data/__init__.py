"""Image-classification datasets as batched ``tf.data`` pipelines.

`load_dataset` returns ``(dataset, info)`` for a name, looking for data that is
already on disk first, in this order:

1. ``"tfds"``: a prepared TensorFlow Datasets directory (``data_dir``, else
   TFDS's default), for ``cifar10``, ``cifar100``, ``fashion_mnist``,
   ``mnist`` or any other TFDS image-classification name.
2. ``"idx"``: gzipped (or plain) IDX files for ``fashion_mnist`` and ``mnist``
   in ``data_dir`` or where Debian's ``dataset-fashion-mnist`` package puts
   them (``/usr/share/datasets/fashion-mnist``).
3. ``"folder"``: an image folder with one sub-folder per class, when ``name``
   is a directory (or ``data_dir/name`` is one).
4. ``"labels"``: a label file, when ``name`` ends with ``.csv``: one row per
   image with its labels (several per image, see `labels`); nothing else is tried.
5. ``"sample"``: the name ``fashion_mnist_sample``: 3,000 training and 1,000
   test images of the real Fashion-MNIST (class-balanced, built by
   `make_sample`) shipped inside the package, so examples and tests run offline.

Only when none of them has the data and ``download=True`` does TFDS download
it, in a child process that is killed after ``download_timeout`` seconds.

The pipeline follows the paper's CIFAR/SVHN recipe: per-channel mean/std
normalisation with statistics of the training split and, for training, a
random crop after 4-pixel zero padding plus a horizontal flip (not for digits).

Modules: `idx` (IDX files, the embedded sample), `labels` (label files),
`sources` (where the data comes from) and `pipeline` (`load_dataset`).

Example:
    >>> dataset, info = load_dataset("fashion_mnist_sample", "train", batch_size=64)
    >>> info.image_shape, info.num_classes
    ((28, 28, 1), 10)
"""

from keras_densenet.data.idx import (
    FASHION_MNIST_CLASSES,
    IDX_DIRS,
    IDX_FILES,
    SAMPLE_NAME,
    SAMPLE_PATH,
    make_sample,
    read_idx,
)
from keras_densenet.data.labels import read_label_csv
from keras_densenet.data.pipeline import (
    BAD_IMAGES,
    NO_FLIP,
    PAD,
    SPLITS,
    DatasetInfo,
    load_dataset,
)
from keras_densenet.data.sources import SOURCES, DatasetNotFoundError

__all__ = [
    "BAD_IMAGES",
    "FASHION_MNIST_CLASSES",
    "IDX_DIRS",
    "IDX_FILES",
    "NO_FLIP",
    "PAD",
    "SAMPLE_NAME",
    "SAMPLE_PATH",
    "SOURCES",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "load_dataset",
    "make_sample",
    "read_idx",
    "read_label_csv",
]
