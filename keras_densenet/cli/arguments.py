"""The ``keras-densenet`` arguments: sub-commands, flags and value parsers.

``train``'s flags come from `TrainConfig`'s options (their rules and help);
choices come from the library's constants. Nothing here imports Keras or
TensorFlow.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, NoReturn

from keras_densenet.evaluation import SPLITS
from keras_densenet.export.model import QUANTIZATIONS, SERVING_DTYPES
from keras_densenet.images import MAX_PIXELS
from keras_densenet.presets import PRESETS
from keras_densenet.training.config import OPTIONS, Rule, TrainConfig
from keras_densenet.tuning.space import QUICK, SEARCH_SPACE, TUNERS

PROG = "keras-densenet"
#: The largest count a flag accepts (TensorFlow's int32 maximum).
_INT_MAX = 2**31 - 1
#: Test images in the embedded sample (``predict --sample``).
SAMPLE_TEST_IMAGES = 1000


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see --help)")


class UsageError(ValueError):
    """A bad command-line value found after parsing."""


def fail(message: str, code: int = 2, *, at_once: bool = False) -> NoReturn:
    """Prints one line on stderr and exits with ``code``.

    ``at_once`` leaves without the interpreter's teardown (``os._exit``), for
    a process that ran out of memory: freeing TensorFlow variables there can
    crash it (SIGSEGV) after the message was printed.
    """
    print(" ".join(str(message).split()), file=sys.stderr, flush=True)
    if at_once:
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


# ---------------------------------------------------------------------------
# Value parsers: each refuses with the range it allows.


def _int(low: int = 1, high: int = _INT_MAX) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{low}, {high}], got {text!r}"
            )
        return value

    return parse


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_list(high: int = _INT_MAX, length: int | None = None) -> Any:
    what = f"{length} comma-separated" if length else "comma-separated"

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            values = ()
        if (
            not values
            or (length and len(values) != length)
            or not all(1 <= v <= high for v in values)
        ):
            raise argparse.ArgumentTypeError(
                f"expected {what} integers in [1, {high}], e.g. 6,12,24,16; got {text!r}"
            )
        return values

    return parse


def _size(text: str) -> tuple[int, int]:
    values = _int_list(int(OPTIONS["image_size"].high))(text.lower().replace("x", ","))
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH or SIZE, got {text!r}")
    return values  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Sub-commands. Each `_add_<command>` declares the flags; `_<command>` runs it.

#: How ``--help`` shows defaults that are not a plain value.
_SHOWN_DEFAULTS = {
    "preset": "densenet_bc_100_12 unless --depth or --blocks is given",
    "image_size": "the dataset's",
    "channels": "the dataset's",
    "data_dir": "where each source looks by default",
    "steps_per_epoch": "one pass over the training data",
    "seed": "none: not reproducible",
    "distribute": "none: one device",
}
#: Flags whose name differs from the option they set.
_FLAG_NAMES = {"dropout_rate": "--dropout", "bottleneck": "--no-bottleneck", "verbose": "--verbose"}


def _add_option(group: Any, name: str, rule: Rule) -> None:
    """One ``train`` flag from a `TrainConfig` option's rule."""
    flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    default = TrainConfig.__dataclass_fields__[name].default
    shown = _SHOWN_DEFAULTS.get(name, default)
    if shown is None and rule.group.startswith("architecture"):
        shown = "the preset's"
    help_text = rule.help + (f" (default: {shown})" if shown is not None else "")
    help_text = help_text.replace("%", "%%")
    if rule.kind == "bool":
        if name == "bottleneck":
            group.add_argument(
                flag,
                dest=name,
                action="store_const",
                const=False,
                help="plain 3x3 layers without the 1x1 bottleneck (DenseNet without B)",
            )
        else:
            group.add_argument(flag, dest=name, action="store_true", default=None, help=rule.help)
        return
    kwargs: dict[str, Any] = {"dest": name, "help": help_text}
    if rule.kind == "int":
        kwargs["type"] = _int(int(rule.low), int(rule.high))
    elif rule.kind == "float":
        kwargs["type"] = _float
    elif rule.kind == "ints":
        kwargs["type"] = _size if rule.length == 2 else _int_list(int(rule.high))
    elif rule.kind == "choice":
        choices = [c for c in rule.choices if c is not None]
        kwargs["choices"] = choices
        if all(isinstance(c, int) for c in choices):
            kwargs["type"] = int
        kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}" if len(choices) < 8 else "NAME"
    group.add_argument(flag, **kwargs)


def _add_train(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="train a DenseNet (model.fit) into a run directory",
        description="Train a DenseNet with the paper's recipe into a run directory "
        "(best.keras, history.csv, curves.png, summary.json, ...). Every flag is a "
        "TrainConfig option; --config reads them from a JSON file, flags override it.",
    )
    train.add_argument(
        "--config",
        help="JSON file of training options (e.g. a tuner's best_config.json); flags override it",
    )
    groups: dict[str, Any] = {}
    for name, rule in OPTIONS.items():
        if name in ("verbose", "resume", "out"):
            continue
        if rule.group not in groups:
            groups[rule.group] = train.add_argument_group(rule.group)
        _add_option(groups[rule.group], name, rule)
    run = groups["execution"]
    run.add_argument("--out", help="run directory (default: runs/default)")
    run.add_argument(
        "--resume", action="store_true", default=None, help="continue the run in --out"
    )
    run.add_argument(
        "--quiet", action="store_true", help="one line per epoch (the default when not a terminal)"
    )


def _add_data(parser: Any, run_default: bool = False) -> None:
    group = parser.add_argument_group("data")
    default = "the run's" if run_default else "fashion_mnist_sample"
    group.add_argument("--dataset", help=f"{OPTIONS['dataset'].help} (default: {default})")
    group.add_argument("--data-dir", help=OPTIONS["data_dir"].help)
    group.add_argument("--image-size", type=_size, help=OPTIONS["image_size"].help)
    group.add_argument("--channels", type=int, choices=(1, 3), help=OPTIONS["channels"].help)


def _add_evaluate(sub: Any) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="accuracy, per-class accuracy and a confusion matrix"
    )
    evaluate.add_argument("model", help="a run directory or a .keras file")
    _add_data(evaluate, run_default=True)
    evaluate.add_argument(
        "--split",
        default="test",
        choices=SPLITS,
        help="the split to score; validation is the part of train the run held out "
        "(default: %(default)s)",
    )
    evaluate.add_argument(
        "--validation-fraction",
        type=_float,
        help="the held-out part of train for --split validation (default: the run's)",
    )
    evaluate.add_argument(
        "--batch-size", type=_int(1, 65_536), default=256, help="batch size (default: %(default)s)"
    )
    evaluate.add_argument(
        "--out", help="directory for evaluation.json and confusion_matrix.png (default: the run)"
    )
    _add_allow_unsafe(evaluate)


def _add_allow_unsafe(parser: Any) -> None:
    parser.add_argument(
        "--allow-unsafe",
        action="store_true",
        help="load a model file that carries code (Lambda layers); only for files you trust",
    )


def _add_architecture(parser: Any) -> None:
    group = parser.add_argument_group("architecture (overrides the preset's values)")
    for name in ("preset", "depth", "blocks", "growth_rate", "compression", "bottleneck"):
        _add_option(group, name, OPTIONS[name])
    _add_option(group, "dropout_rate", OPTIONS["dropout_rate"])
    _add_option(group, "memory_efficient", OPTIONS["memory_efficient"])


def _add_summary(sub: Any) -> None:
    summary = sub.add_parser("summary", help="per-block table of shapes, channels, params and MACs")
    _add_architecture(summary)
    summary.set_defaults(preset="densenet121")
    summary.add_argument(
        "--input-shape", type=_int_list(16_384, 3), help="HEIGHT,WIDTH,CHANNELS (NHWC)"
    )
    summary.add_argument("--num-classes", type=_int(1, 1_000_000), help="classifier outputs")
    summary.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def _add_export(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="export a run or .keras model as a TF Serving SavedModel (and TFLite)"
    )
    export.add_argument("model", help="a run directory or a .keras file")
    export.add_argument(
        "--out", required=True, help="model directory, e.g. saved_models/NAME (versions inside)"
    )
    export.add_argument(
        "--format",
        choices=("savedmodel", "onnx"),
        default="savedmodel",
        help="savedmodel: a TF Serving version in --out; onnx: --out/model.onnx for ONNX "
        "Runtime (float32 raw pixels at the model's size) (default: %(default)s)",
    )
    export.add_argument("--version", type=_int(), help="version number (default: next free)")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing version (or, with --format onnx, model.onnx)",
    )
    export.add_argument(
        "--serving-dtype",
        choices=SERVING_DTYPES,
        help="dtype the served graph computes in (default: float32, also for mixed-precision "
        "models; float16/bfloat16 keep a low-precision graph for GPU serving)",
    )
    export.add_argument(
        "--no-fold-batchnorm",
        dest="fold_batchnorm",
        action="store_false",
        help="export the graph as trained; by default each BatchNormalization that follows a "
        "convolution is folded into it (same outputs, ~12%% lower latency on DenseNet-121)",
    )
    export.add_argument(
        "--max-image-pixels",
        type=_int(1, 2**40),
        default=MAX_PIXELS,
        help="largest HEIGHT x WIDTH a request may send (default: %(default)s)",
    )
    export.add_argument(
        "--tflite",
        choices=QUANTIZATIONS,
        help="also write model_<QUANTIZATION>.tflite next to the versions (int8: calibrated "
        "on the run's own training images, or on --calibration-dataset)",
    )
    export.add_argument(
        "--calibration-dataset",
        help="dataset of images to calibrate --tflite int8 with, for a .keras file outside a "
        "run directory (default: the run's dataset)",
    )
    _add_allow_unsafe(export)


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser("predict", help="top-k classes of images from a model or an export")
    predict.add_argument(
        "model", help="a .keras file, a run directory, or an exported SavedModel directory"
    )
    predict.add_argument("images", nargs="*", help="JPEG/PNG/GIF/BMP image files")
    predict.add_argument(
        "--sample",
        type=_int(1, SAMPLE_TEST_IMAGES),
        metavar="N",
        help="predict the first N of the embedded fashion_mnist_sample's "
        f"{SAMPLE_TEST_IMAGES} test images (with their true labels)",
    )
    predict.add_argument(
        "--top-k", type=_int(1, 1000), default=3, help="classes shown per image (default: 3)"
    )
    predict.add_argument(
        "--explain",
        metavar="OUT_DIR",
        help="also write each image with a Grad-CAM heatmap of its top class over it, as "
        "OUT_DIR/<image>_gradcam.png (a .keras file or run directory, not a SavedModel)",
    )
    predict.add_argument(
        "--overwrite", action="store_true", help="replace existing --explain files"
    )
    predict.add_argument(
        "--max-image-pixels",
        type=_int(1, 2**40),
        default=MAX_PIXELS,
        help="refuse image files of more HEIGHT x WIDTH pixels (default: %(default)s)",
    )
    _add_allow_unsafe(predict)


def _add_search_flags(search: Any) -> None:
    """``tune``'s search flags: the tuner, its budget and the search space."""
    search.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run that finishes in minutes: {QUICK['max_trials']} Hyperband trials of "
        f"1-{QUICK['max_epochs']} epochs x {QUICK['steps_per_epoch']} steps, k in "
        f"{QUICK['ranges']['growth_rate'][:2]}, 1-2 layers per block (flags override it)",
    )
    search.add_argument(
        "--tuner",
        default="hyperband",
        choices=TUNERS,
        help="search algorithm (default: %(default)s)",
    )
    search.add_argument("--max-trials", type=_int(1, 100_000), help="most trials (default 10)")
    search.add_argument(
        "--max-epochs",
        type=_int(1, 100_000),
        help="epochs per trial; Hyperband: the most for one model (default 20)",
    )
    search.add_argument(
        "--factor",
        type=_int(2, 1000),
        default=None,
        help="Hyperband reduction factor (default 3; 2 with --quick)",
    )
    search.add_argument(
        "--max-params",
        type=_int(1, 2**40),
        help="trainable-parameter budget: larger configurations are pruned before building",
    )
    search.add_argument(
        "--range",
        dest="ranges",
        action="append",
        metavar="NAME=LOW,HIGH[,STEP]",
        help="search range, e.g. growth_rate=8,48,4 or bottleneck=true (repeatable); names: "
        + ", ".join(SEARCH_SPACE),
    )
    search.add_argument(
        "--fix",
        action="append",
        metavar="NAME=VALUE",
        help="hold a value, e.g. compression=0.5, depth=40 or blocks=6,12,24,16 (repeatable)",
    )
    search.add_argument(
        "--overwrite", action="store_true", help="discard a search in --out instead of resuming"
    )


def _add_tune(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="search growth rate, compression, depth, ... with KerasTuner",
        description="Search DenseNet architectures with KerasTuner. Writes results.csv, "
        "results.json, accuracy_vs_params.png, best_config.json (train it with "
        "`keras-densenet train --config`) and best.keras into --out.",
    )
    tune.add_argument(
        "--config", help="JSON file of base training options (as for train); flags override it"
    )
    _add_search_flags(tune.add_argument_group("search"))
    _add_data(tune)
    trial = tune.add_argument_group("each trial (defaults: as for train)")
    for name in ("validation_fraction", "batch_size", "steps_per_epoch", "precision"):
        _add_option(trial, name, OPTIONS[name])
    _add_option(trial, "jit_compile", OPTIONS["jit_compile"])
    _add_option(trial, "seed", OPTIONS["seed"])
    tune.add_argument("--download", action="store_true", default=None, help="allow TFDS downloads")
    tune.add_argument(
        "--out", default="tuning/default", help="tuning directory (default: %(default)s)"
    )
    tune.add_argument("--quiet", action="store_true", help="no trial tables or progress")


def _add_convert_weights(sub: Any) -> None:
    convert = sub.add_parser(
        "convert-weights",
        help="convert a PyTorch DenseNet checkpoint (torchvision, timm) to a Keras .weights.h5",
        description="Convert a torchvision or timm DenseNet state dict (.pth read with "
        "torch.load(weights_only=True), or .safetensors) into a Keras weights file for "
        "build_densenet(PRESET, bn_epsilon=1e-5, weights=OUT).",
    )
    convert.add_argument("source", help="the PyTorch checkpoint (.pth, .pt, .bin, .safetensors)")
    convert.add_argument("out", help="the Keras weights file to write (.weights.h5)")
    convert.add_argument(
        "--preset",
        required=True,
        choices=[name for name in PRESETS if not name.startswith("densenet_")],
        help="the architecture of the checkpoint",
    )
    convert.add_argument(
        "--num-classes", type=_int(1, 1_000_000), help="classifier outputs (default: the preset's)"
    )
    convert.add_argument(
        "--no-top",
        action="store_true",
        help="features only: leave the classifier out (include_top=False)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output")


def build_parser() -> argparse.ArgumentParser:
    """The full ``keras-densenet`` argument parser.

    Returns:
        The parser with all sub-commands.
    """
    parser = Parser(
        prog=PROG,
        description="DenseNets for Keras 3: train, evaluate, summarize, tune, export and predict.",
    )
    from keras_densenet import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (
        _add_train,
        _add_evaluate,
        _add_summary,
        _add_tune,
        _add_export,
        _add_predict,
        _add_convert_weights,
    ):
        add(sub)
    return parser


__all__ = ["PROG", "SAMPLE_TEST_IMAGES", "Parser", "UsageError", "build_parser", "fail"]
