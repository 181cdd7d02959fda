"""The ``keras-densenet`` command: a thin shell over the library functions.

Every sub-command is one library call; its flags come from the library's own
options and constants (``train``'s from `TrainConfig`'s fields). Nothing heavy
is imported until a sub-command runs, so ``--help`` and argument errors answer
at once. Every bad value ends with one line on stderr, naming the flag, and
exit code 2, never a traceback; a training failure the user can act on (NaN
loss, out of memory) ends with one line and exit code 1.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from keras_densenet.evaluation import SPLITS
from keras_densenet.export.model import QUANTIZATIONS, SERVING_DTYPES
from keras_densenet.images import MAX_PIXELS
from keras_densenet.training.config import OPTIONS, Rule, TrainConfig
from keras_densenet.tuning.space import QUICK, SEARCH_SPACE, TUNERS

PROG = "keras-densenet"
#: The largest count a flag accepts (TensorFlow's int32 maximum).
_INT_MAX = 2**31 - 1
#: Test images in the embedded sample (``predict --sample``).
_SAMPLE_TEST_IMAGES = 1000


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message} (see --help)")


class UsageError(ValueError):
    """A bad command-line value found after parsing."""


def _fail(message: str, code: int = 2) -> NoReturn:
    print(" ".join(str(message).split()), file=sys.stderr)
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
    train.set_defaults(func=_train)


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
    evaluate.set_defaults(func=_evaluate)


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
    summary.set_defaults(func=_summary)


def _add_export(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="export a run or .keras model as a TF Serving SavedModel (and TFLite)"
    )
    export.add_argument("model", help="a run directory or a .keras file")
    export.add_argument(
        "--out", required=True, help="model directory, e.g. saved_models/NAME (versions inside)"
    )
    export.add_argument("--version", type=_int(), help="version number (default: next free)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument(
        "--serving-dtype",
        choices=SERVING_DTYPES,
        help="dtype the served graph computes in (default: float32, also for mixed-precision "
        "models; float16/bfloat16 keep a low-precision graph for GPU serving)",
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
    export.set_defaults(func=_export)


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser("predict", help="top-k classes of images from a model or an export")
    predict.add_argument(
        "model", help="a .keras file, a run directory, or an exported SavedModel directory"
    )
    predict.add_argument("images", nargs="*", help="JPEG/PNG/GIF/BMP image files")
    predict.add_argument(
        "--sample",
        type=_int(1, _SAMPLE_TEST_IMAGES),
        metavar="N",
        help="predict the first N of the embedded fashion_mnist_sample's "
        f"{_SAMPLE_TEST_IMAGES} test images (with their true labels)",
    )
    predict.add_argument(
        "--top-k", type=_int(1, 1000), default=3, help="classes shown per image (default: 3)"
    )
    predict.add_argument(
        "--max-image-pixels",
        type=_int(1, 2**40),
        default=MAX_PIXELS,
        help="refuse image files of more HEIGHT x WIDTH pixels (default: %(default)s)",
    )
    _add_allow_unsafe(predict)
    predict.set_defaults(func=_predict)


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
    search = tune.add_argument_group("search")
    search.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run that finishes in minutes: {QUICK['max_trials']} trials of "
        f"{QUICK['max_epochs']} epochs x {QUICK['steps_per_epoch']} steps, k in "
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
        "--factor", type=_int(2, 1000), default=3, help="Hyperband reduction factor (default 3)"
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
    tune.set_defaults(func=_tune)


def build_parser() -> argparse.ArgumentParser:
    """The full ``keras-densenet`` argument parser.

    Returns:
        The parser with all sub-commands.
    """
    parser = _Parser(
        prog=PROG,
        description="DenseNets for Keras 3: train, evaluate, summarize, tune, export and predict.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_train, _add_evaluate, _add_summary, _add_tune, _add_export, _add_predict):
        add(sub)
    return parser


# ---------------------------------------------------------------------------
# What each sub-command does: one library call each.


def _read_config(path: str | None) -> dict[str, Any]:
    """The JSON object of options in ``--config`` (empty without one)."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise UsageError(f"--config file not found: {path!r}")
    from keras_densenet._io import read_json

    try:
        options = read_json(path, "--config file")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not isinstance(options, dict):
        raise UsageError(f"--config {path!r} must hold a JSON object of options")
    for name, value in options.items():  # named as in the file, not as flags
        if name in OPTIONS:
            try:
                OPTIONS[name].check(name, value)
            except (TypeError, ValueError) as err:
                raise UsageError(f"--config {path!r}: {err}") from None
    return options


def _import_keras() -> None:
    """Imports Keras (and TensorFlow) once the arguments are known to be good.

    TensorFlow's C++ runtime prints a banner to stderr while it is imported,
    whatever ``TF_CPP_MIN_LOG_LEVEL`` says; the command's stderr is for its
    own messages.
    """
    from keras_densenet._startup import quiet_native_stderr

    with quiet_native_stderr():
        import keras  # noqa: F401

        import keras_densenet.layers  # noqa: F401  (registers the layers with Keras)


def _options(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _verbosity(quiet: bool) -> int:
    # Progress bars only on a terminal: a log file gets one line per epoch.
    return 2 if quiet or not sys.stdout.isatty() else 1


def _train(args: argparse.Namespace) -> int:
    options = _read_config(args.config)
    options.update(_options(args, [n for n in OPTIONS if n != "verbose"]))
    if "verbose" not in options or args.quiet:
        options["verbose"] = _verbosity(args.quiet)
    if "preset" not in options and not ({"depth", "blocks"} & set(options)):
        options["preset"] = TrainConfig.preset
    config = TrainConfig.from_dict(options)
    _import_keras()
    from keras_densenet.training import TrainingError, train

    try:
        summary = train(config)
    except TrainingError as err:
        _fail(f"{PROG} train: {err}", code=1)
    if summary.get("already_complete"):
        print(
            f"run {config.out} is already complete ({summary.get('epochs')} epochs): nothing to do"
        )
    print(
        f"test accuracy {summary['test_accuracy']:.4f} | params {summary['params']:,} | "
        f"{summary['epochs']} epochs | {summary['images_per_second'] or 0:.1f} images/s | "
        f"{summary['wall_time_s']:.0f} s | run {config.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _import_keras()
    from keras_densenet.evaluation import evaluate

    result = evaluate(
        args.model,
        args.dataset,
        split=args.split,
        out=args.out,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        image_size=args.image_size,
        channels=args.channels,
        validation_fraction=args.validation_fraction,
        allow_unsafe=args.allow_unsafe,
    )
    print(f"accuracy {result['accuracy']:.4f} on {result['num_examples']} {args.split} images")
    for name, acc in result["per_class_accuracy"].items():
        print(f"  {name:<20} {acc:.4f}")
    return 0


def _calibration(args: argparse.Namespace) -> Any:
    """int8 calibration images, gathered before anything is written."""
    from keras_densenet import rundir
    from keras_densenet.export import calibration_images

    directory = args.model if os.path.isdir(args.model) else os.path.dirname(args.model)
    if args.calibration_dataset is None:
        if not os.path.isfile(os.path.join(directory, rundir.CONFIG)):
            raise UsageError(
                f"--tflite int8 needs images to calibrate with: {args.model!r} is not in a run "
                "directory, so pass --calibration-dataset"
            )
        return calibration_images(directory)
    from keras_densenet.data import load_dataset
    from keras_densenet.export.model import load_keras_model, model_spec

    height, width, channels, _ = model_spec(load_keras_model(args.model)[0])
    dataset, _ = load_dataset(
        args.calibration_dataset,
        "train",
        batch_size=200,
        normalize=False,
        augment=False,
        shuffle=False,
        image_size=(height, width),
        channels=channels,
    )
    return next(iter(dataset))[0].numpy().round().clip(0, 255).astype("uint8")


def _export(args: argparse.Namespace) -> int:
    _import_keras()
    from keras_densenet import export

    representative = _calibration(args) if args.tflite == "int8" else None
    path = export.export_savedmodel(
        args.model,
        args.out,
        version=args.version,
        overwrite=args.overwrite,
        serving_dtype=args.serving_dtype,
        max_image_pixels=args.max_image_pixels,
        allow_unsafe=args.allow_unsafe,
    )
    info = export.read_export_info(path)
    print(f"exported SavedModel {path} (serving dtype {info['serving_dtype']})")
    if args.tflite:
        tflite = export.export_tflite(
            args.model,
            os.path.join(args.out, f"model_{args.tflite}.tflite"),
            quantization=args.tflite,
            representative_data=representative,
            allow_unsafe=args.allow_unsafe,
        )
        print(f"exported TFLite {tflite}")
    print(export.tensorflow_serving_command(args.out))
    return 0


def _sample_images(count: int) -> tuple[Any, list[str]]:
    """The first ``count`` uint8 test images of the embedded sample and their labels."""
    import numpy as np

    from keras_densenet.data import load_dataset

    dataset, info = load_dataset(
        "fashion_mnist_sample", "test", batch_size=count, normalize=False, shuffle=False
    )
    images, labels = next(iter(dataset))
    names = [info.class_names[int(i)] for i in np.asarray(labels)]
    return np.asarray(images).astype("uint8"), names


def _predict(args: argparse.Namespace) -> int:
    if not args.images and not args.sample:
        raise UsageError("give image files or --sample N")
    if args.images and args.sample:
        raise UsageError("give either image files or --sample N, not both")
    _import_keras()
    from keras_densenet import export

    images: Any = list(args.images)
    truths: list[str | None] = [None] * len(images)
    labels = list(args.images)
    if args.sample:
        images, names = _sample_images(args.sample)
        truths = list(names)
        labels = [f"sample test image {i}" for i in range(len(truths))]
    results = export.predict(
        args.model,
        images,
        top_k=args.top_k,
        max_image_pixels=args.max_image_pixels,
        allow_unsafe=args.allow_unsafe,
    )
    for label, truth, top in zip(labels, truths, results, strict=True):
        guesses = ", ".join(f"{name} {prob:.3f}" for name, prob in top)
        suffix = f" (true: {truth})" if truth is not None else ""
        print(f"{label}{suffix}: {guesses}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    import json

    _import_keras()
    from keras_densenet.analysis import block_table, format_table
    from keras_densenet.models import build_densenet

    architecture = _options(
        args, ("depth", "blocks", "growth_rate", "compression", "bottleneck", "dropout_rate")
    )
    model = build_densenet(
        args.preset,
        **architecture,
        input_shape=tuple(args.input_shape) if args.input_shape else None,
        num_classes=args.num_classes,
        memory_efficient=bool(args.memory_efficient),
    )
    print(json.dumps(block_table(model)) if args.json else format_table(model))
    return 0


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """Parses ``NAME=VALUE`` items of ``--fix`` and ``--range``.

    Values are ints, floats or ``true``/``false``; a comma-separated list
    becomes a tuple (a range ``8,48`` or ``8,48,4``, blocks ``6,12,24,16``).

    Args:
        items: The ``NAME=VALUE`` strings.
        what: The flag, for error messages (e.g. ``"--fix"``).

    Returns:
        Name -> parsed value.

    Raises:
        UsageError: For an item without ``=`` or a value that is not a number
            or boolean.
    """
    parsed: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not text.strip():
            raise UsageError(f"{what} expects NAME=VALUE, e.g. growth_rate=12; got {item!r}")
        values = tuple(_scalar(v, item, what) for v in text.split(","))
        parsed[name] = values if len(values) > 1 or name == "blocks" else values[0]
    return parsed


def _scalar(text: str, item: str, what: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            break
        return value
    raise UsageError(f"{what} value {text!r} in {item!r} is not a finite number or true/false")


def _tune(args: argparse.Namespace) -> int:
    ranges = parse_assignments(args.ranges, "--range")
    fixed = parse_assignments(args.fix, "--fix")
    options = _read_config(args.config)
    options.update(
        _options(
            args,
            (
                "dataset",
                "data_dir",
                "image_size",
                "channels",
                "download",
                "validation_fraction",
                "batch_size",
                "steps_per_epoch",
                "precision",
                "jit_compile",
                "seed",
            ),
        )
    )
    options["verbose"] = 0 if args.quiet else _verbosity(False)
    max_trials, max_epochs = args.max_trials or 10, args.max_epochs or 20
    if args.quick:
        ranges = {**QUICK["ranges"], **ranges}
        options.setdefault("steps_per_epoch", QUICK["steps_per_epoch"])
        max_trials = args.max_trials or QUICK["max_trials"]
        max_epochs = args.max_epochs or QUICK["max_epochs"]
    base = TrainConfig.from_dict(options)  # checked before KerasTuner is imported
    from keras_densenet.tuning.space import SearchSpace

    SearchSpace({f: getattr(base, f) for f in ("depth", "blocks")}, ranges, fixed)
    _import_keras()
    from keras_densenet.tuning import tune

    summary = tune(
        base,
        tuner=args.tuner,
        max_trials=max_trials,
        max_epochs=max_epochs,
        factor=args.factor,
        ranges=ranges,
        fixed=fixed,
        max_params=args.max_params,
        out=args.out,
        overwrite=args.overwrite,
    )
    if summary["role"] == "worker":
        print(f"worker {summary['tuner_id']} finished | search in {args.out}")
        return 0
    counts = (
        f"{summary['trials']} trials: {summary['completed']} completed, "
        f"{summary['pruned']} pruned, {summary['failed']} failed"
    )
    best = summary["best"]
    if best is None:
        _fail(f"{PROG} tune: no trial completed ({counts}); see {summary['results_csv']}", 1)
    arch = best["architecture"]
    layout = f"L={arch['depth']}" if arch["depth"] else f"blocks {arch['blocks']}"
    print(
        f"best val accuracy {best['val_accuracy']:.4f} (trial {best['trial_id']}: {layout}, "
        f"k={arch['growth_rate']}, theta={arch['compression']:.2f}, "
        f"{best['trainable_params']:,} params) | {counts} | {summary['wall_time_s']:.0f} s | "
        f"train it: {PROG} train --config {summary['best_config']}"
    )
    return 0


# ---------------------------------------------------------------------------


def _flags_of(parser: argparse.ArgumentParser, command: str | None) -> dict[str, str]:
    """Option name -> its flag, for the sub-command that ran."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            parser = action.choices[command]
    return {
        action.dest: action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }


def _speak_flags(message: str, flags: dict[str, str]) -> str:
    """Rewrites the library's argument names in a message as the command's flags.

    ```overwrite=True``` becomes ``--overwrite``, ```bad_images='skip'``` becomes
    ``--bad-images skip`` and ```batch_size``` becomes ``--batch-size``; names
    with no flag stay as they are.
    """

    def replace(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        flag = flags.get(name)
        if flag is None:
            return match.group(0)
        if value is None:
            return flag
        value = value.strip("'\"")
        return flag if value == "True" else f"{flag} {value}"

    return re.sub(r"`(\w+)(?:=([^`]+))?`", replace, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``keras-densenet`` command.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code (0 on success); errors exit via ``SystemExit``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        _fail(f"{PROG} {args.command}: error: {err}")
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as err:
        message = _speak_flags(str(err), _flags_of(parser, args.command))
        _fail(f"{PROG} {args.command}: error: {message}")
    except KeyboardInterrupt:
        _fail(f"{PROG} {args.command}: interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
