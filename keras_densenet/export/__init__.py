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

from keras_densenet._lazy import lazy_exports

# Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "BYTES_INPUT": "savedmodel",
    "CHANNELS": "model",
    "CLASSES": "savedmodel",
    "CLASS_NAMES_FILE": "savedmodel",
    "EXPORT_INFO_FILE": "savedmodel",
    "IMAGES_INPUT": "savedmodel",
    "MAX_PIXELS": "keras_densenet.images",
    "METADATA": "savedmodel",
    "PROBABILITIES": "savedmodel",
    "QUANTIZATIONS": "model",
    "REQUEST_FORMATS": "savedmodel",
    "SERVING_BYTES": "savedmodel",
    "SERVING_DEFAULT": "savedmodel",
    "SERVING_DTYPES": "model",
    "calibration_images": "tflite",
    "export_onnx": "onnx",
    "export_savedmodel": "savedmodel",
    "export_tflite": "tflite",
    "fold_batchnorm": "folding",
    "labels_above": "predict",
    "list_versions": "versions",
    "load_image_files": "keras_densenet.images",
    "load_keras_model": "model",
    "predict": "predict",
    "predict_labels": "predict",
    "predict_scores": "predict",
    "PREDICTED": "savedmodel",
    "THRESHOLDS_FILE": "savedmodel",
    "read_export_info": "savedmodel",
    "run_tflite": "tflite",
    "savedmodel_dir": "versions",
    "serving_request_body": "serving",
    "tensorflow_serving_command": "serving",
    "tflite_interpreter": "tflite",
    "top_classes": "predict",
    "with_serving_dtype": "model",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
