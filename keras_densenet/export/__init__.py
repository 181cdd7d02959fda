"""Exporting trained DenseNets: TF Serving SavedModels, TFLite files, predictions.

Data flows one way: a ``.keras`` file or a training run directory
(``best.keras``, ``last.keras``, ``summary.json``) -> `export_savedmodel` /
`export_tflite`. Models trained by this package normalise raw pixels
themselves (a ``Normalization`` layer after the input), so every export takes
raw pixels in 0..255. This package needs the TensorFlow backend.

Modules: `savedmodel` (signatures, versions, atomic publishing, serving
helpers), `tflite` (float32 and int8 files, calibration), `predict`,
`model` (class names, serving precision) and `inputs` (image validation,
in-graph decoding).

Example:
    >>> path = export_savedmodel("runs/fashion", "saved_models/fashion")
    >>> predict(path, ["shoe.png"], top_k=3)
    [[('Ankle boot', 0.97), ('Sneaker', 0.02), ('Sandal', 0.01)]]
"""

from keras_densenet.export.model import (
    CHANNELS,
    SERVING_DTYPES,
    load_keras_model,
    with_serving_dtype,
)
from keras_densenet.export.predict import predict
from keras_densenet.export.savedmodel import (
    BYTES_INPUT,
    CLASS_NAMES_FILE,
    CLASSES,
    EXPORT_INFO_FILE,
    IMAGES_INPUT,
    METADATA,
    PROBABILITIES,
    REQUEST_FORMATS,
    SERVING_BYTES,
    SERVING_DEFAULT,
    export_savedmodel,
    list_versions,
    savedmodel_dir,
    serving_request_body,
    tensorflow_serving_command,
)
from keras_densenet.export.tflite import (
    QUANTIZATIONS,
    calibration_images,
    export_tflite,
    run_tflite,
    tflite_interpreter,
)
from keras_densenet.images import MAX_PIXELS, load_image_files

__all__ = [
    "BYTES_INPUT",
    "CHANNELS",
    "CLASSES",
    "CLASS_NAMES_FILE",
    "EXPORT_INFO_FILE",
    "IMAGES_INPUT",
    "MAX_PIXELS",
    "METADATA",
    "PROBABILITIES",
    "QUANTIZATIONS",
    "REQUEST_FORMATS",
    "SERVING_BYTES",
    "SERVING_DEFAULT",
    "SERVING_DTYPES",
    "calibration_images",
    "export_savedmodel",
    "export_tflite",
    "list_versions",
    "load_image_files",
    "load_keras_model",
    "predict",
    "run_tflite",
    "savedmodel_dir",
    "serving_request_body",
    "tensorflow_serving_command",
    "tflite_interpreter",
    "with_serving_dtype",
]
