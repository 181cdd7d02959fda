"""The ``keras-densenet`` command: a thin shell over the library functions.

Every bad value ends with one line on stderr and exit code 2, never a
traceback; a training failure the user can act on (NaN loss, out of memory)
ends with one line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

PROG = "keras-densenet"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message} (see --help)")


class UsageError(ValueError):
    """A bad command-line value found after parsing."""


def _fail(message: str, code: int = 2) -> NoReturn:
    line = " ".join(str(message).split())
    print(line, file=sys.stderr)
    sys.exit(code)


def _int_at_least(minimum: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, e.g. 6,12,24,16; got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, e.g. 6,12,24,16; got {text!r}"
        )
    return values


def _size(text: str) -> tuple[int, int]:
    values = _int_list(text.replace("x", ","))
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH or SIZE, got {text!r}")
    return values  # type: ignore[return-value]


def _add_architecture(parser: argparse.ArgumentParser, preset_default: str | None) -> None:
    from keras_densenet.models import PRESETS

    group = parser.add_argument_group("architecture (overrides the preset's values)")
    group.add_argument(
        "--preset",
        default=preset_default,
        metavar="NAME",
        help=f"architecture preset: {', '.join(PRESETS)} (default: %(default)s)",
    )
    group.add_argument("--depth", type=_positive_int, help="depth L of the 3-block CIFAR layout")
    group.add_argument("--blocks", type=_int_list, help="layers per dense block, e.g. 6,12,24,16")
    group.add_argument("--growth-rate", type=_positive_int, help="growth rate k")
    group.add_argument("--compression", type=_float, help="transition compression in (0, 1]")
    group.add_argument(
        "--no-bottleneck",
        dest="bottleneck",
        action="store_const",
        const=False,
        default=None,
        help="plain 3x3 layers (no 1x1 bottleneck)",
    )
    group.add_argument("--dropout", dest="dropout_rate", type=_float, help="dropout rate in [0, 1)")
    group.add_argument(
        "--memory-efficient",
        action="store_true",
        help="recompute BN-ReLU-Conv1x1 in the backward pass to save memory",
    )


def _add_data(
    parser: argparse.ArgumentParser, default: str | None = "fashion_mnist_sample"
) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=default,
        help="fashion_mnist_sample (embedded), fashion_mnist, mnist, cifar10, cifar100, any TFDS "
        "image-classification name, or an image folder (default: fashion_mnist_sample)",
    )
    group.add_argument("--data-dir", help="TFDS data dir, IDX directory or image-folder parent")
    group.add_argument("--image-size", type=_size, help="resize images to HEIGHT,WIDTH")
    group.add_argument(
        "--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels"
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``keras-densenet`` argument parser.

    Returns:
        The parser with all subcommands.
    """
    parser = _Parser(
        prog=PROG,
        description="DenseNets for Keras 3: train, evaluate, summarize, export and predict.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a DenseNet (model.fit) into a run directory")
    train.add_argument(
        "--config",
        help="JSON file of training options (e.g. a tuner's best_config.json); flags override it",
    )
    _add_architecture(train, preset_default=None)
    _add_data(train, default=None)
    train.add_argument(
        "--download", action="store_true", help="allow TFDS to download missing data"
    )
    train.add_argument(
        "--validation-fraction",
        type=_float,
        help="part of train held out for validation; 0 validates on test (default 0.1)",
    )
    opt = train.add_argument_group("optimization (defaults: the paper's recipe)")
    opt.add_argument("--epochs", type=_positive_int, help="epochs (default 30)")
    opt.add_argument("--batch-size", type=_positive_int, help="per-replica batch size (default 64)")
    opt.add_argument("--steps-per-epoch", type=_positive_int, help="cap training steps per epoch")
    opt.add_argument(
        "--learning-rate", type=_float, help="base lr (default 0.1 x global batch / 64)"
    )
    opt.add_argument("--momentum", type=_float, help="Nesterov momentum (default 0.9)")
    opt.add_argument("--weight-decay", type=_float, help="weight decay on kernels (default 1e-4)")
    opt.add_argument(
        "--schedule",
        choices=("step", "cosine"),
        help="lr schedule (default step: /10 at 50%% and 75%%)",
    )
    opt.add_argument(
        "--warmup-epochs",
        type=_float,
        help="epochs of linear learning-rate warm-up, may be fractional (default 0)",
    )
    opt.add_argument("--label-smoothing", type=_float, help="label smoothing in [0, 1)")
    opt.add_argument(
        "--bn-momentum",
        type=_float,
        help="BatchNorm moving-average momentum in [0, 1), Keras convention (default 0.9)",
    )
    opt.add_argument(
        "--bn-recalibrate-steps",
        type=_non_negative_int,
        help="batches used to recompute BatchNorm statistics before each validation and for "
        "the final model (PreciseBN); 0 turns it off (default 30)",
    )
    run = train.add_argument_group("execution")
    run.add_argument(
        "--precision",
        choices=("float32", "mixed_float16", "mixed_bfloat16"),
        help="dtype policy (default float32)",
    )
    run.add_argument(
        "--jit-compile",
        choices=("off", "on", "auto"),
        help="XLA (default auto: on with a GPU and no strategy)",
    )
    run.add_argument(
        "--distribute",
        choices=("mirrored", "data_parallel"),
        help="mirrored: tf.distribute.MirroredStrategy over all local GPUs (TensorFlow); "
        "data_parallel: keras.distribution.DataParallel over all devices and hosts (JAX)",
    )
    run.add_argument(
        "--sync-batchnorm", action="store_true", default=None, help="synchronize BN across replicas"
    )
    run.add_argument(
        "--seed", type=_non_negative_int, help="seed of weights, shuffling and augmentation"
    )
    run.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic TensorFlow ops (with --seed)",
    )
    run.add_argument("--out", help="run directory (default runs/default)")
    run.add_argument(
        "--resume", action="store_true", default=None, help="continue the killed run in --out"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "evaluate", help="accuracy, per-class accuracy and a confusion matrix"
    )
    evaluate.add_argument("model", help="a run directory or a .keras file")
    _add_data(evaluate)
    evaluate.add_argument("--split", default="test", choices=("train", "validation", "test"))
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument("--out", help="where to write evaluation.json and confusion_matrix.png")
    evaluate.add_argument(
        "--allow-unsafe",
        action="store_true",
        help="load a model file that carries code (Lambda layers); only for files you trust",
    )
    evaluate.set_defaults(func=_evaluate)

    summary = sub.add_parser("summary", help="per-block table of shapes, channels, params and MACs")
    _add_architecture(summary, preset_default="densenet121")
    summary.add_argument("--input-shape", type=_int_list, help="HEIGHT,WIDTH,CHANNELS")
    summary.add_argument("--num-classes", type=_positive_int)
    summary.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    summary.set_defaults(func=_summary)

    export = sub.add_parser(
        "export", help="export a run or .keras model as a TF Serving SavedModel (and TFLite)"
    )
    export.add_argument("model", help="a run directory or a .keras file")
    export.add_argument(
        "--out", required=True, help="model directory, e.g. saved_models/NAME (versions inside)"
    )
    export.add_argument("--version", type=_positive_int, help="version number (default: next free)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument(
        "--tflite",
        choices=("float32", "int8"),
        help="also write model.tflite next to the version (int8: calibrated on the sample data)",
    )
    export.set_defaults(func=_export)

    predict = sub.add_parser("predict", help="top-k classes of images from a model or an export")
    predict.add_argument(
        "model", help="a .keras file, a run directory, or an exported SavedModel directory"
    )
    predict.add_argument("images", nargs="*", help="JPEG/PNG/GIF/BMP image files")
    predict.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="predict N test images of the embedded fashion_mnist_sample (with their true labels)",
    )
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.set_defaults(func=_predict)

    tune = sub.add_parser(
        "tune", help="search growth rate, compression, depth, ... with KerasTuner"
    )
    tune.add_argument(
        "--config", help="JSON file of base training options (as for train); flags override it"
    )
    search = tune.add_argument_group("search")
    search.add_argument(
        "--tuner",
        default="hyperband",
        choices=("hyperband", "bayesian", "random"),
        help="search algorithm (default: %(default)s)",
    )
    search.add_argument(
        "--max-trials", type=_positive_int, default=10, help="most trials (default 10)"
    )
    search.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=20,
        help="epochs per trial; Hyperband: the most for one model (default 20)",
    )
    search.add_argument(
        "--factor", type=_positive_int, default=3, help="Hyperband reduction factor (default 3)"
    )
    search.add_argument(
        "--max-params",
        type=_positive_int,
        help="trainable-parameter budget: larger configurations are pruned before building",
    )
    search.add_argument(
        "--range",
        dest="ranges",
        action="append",
        metavar="NAME=LOW,HIGH[,STEP]",
        help="search range, e.g. growth_rate=8,48,4 or bottleneck=true (repeatable); names: "
        "growth_rate, compression, layers_per_block, bottleneck, dropout_rate, learning_rate",
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
    _add_data(tune, default=None)
    tune.add_argument("--download", action="store_true", help="allow TFDS to download data")
    tune.add_argument(
        "--validation-fraction", type=_float, help="part of train held out (default 0.1)"
    )
    trial = tune.add_argument_group("each trial (defaults: as for train)")
    trial.add_argument("--batch-size", type=_positive_int, help="per-replica batch size")
    trial.add_argument("--steps-per-epoch", type=_positive_int, help="cap training steps")
    trial.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"))
    trial.add_argument("--jit-compile", choices=("off", "on", "auto"))
    trial.add_argument("--seed", type=_non_negative_int, help="seed of the oracle and trials")
    tune.add_argument(
        "--out", default="tuning/default", help="tuning directory (default: %(default)s)"
    )
    tune.add_argument("--quiet", action="store_true", help="no trial tables or progress")
    tune.set_defaults(func=_tune)

    return parser


def _architecture(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("depth", "blocks", "growth_rate", "compression", "bottleneck", "dropout_rate")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _read_config(path: str | None) -> dict[str, Any]:
    """The JSON object of options in ``--config`` (empty without one)."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise UsageError(f"--config file not found: {path!r}")
    try:
        with open(path) as f:
            options = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"--config {path!r} is not valid JSON: {err}") from None
    if not isinstance(options, dict):
        raise UsageError(f"--config {path!r} must hold a JSON object of options")
    return options


def _train(args: argparse.Namespace) -> int:
    from keras_densenet.training import TrainConfig, TrainingError, train

    options = _read_config(args.config)
    flags = {
        "preset": args.preset,
        **_architecture(args),
        "memory_efficient": args.memory_efficient or None,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "image_size": args.image_size,
        "channels": args.channels,
        "download": args.download or None,
        "validation_fraction": args.validation_fraction,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "learning_rate": args.learning_rate,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "label_smoothing": args.label_smoothing,
        "warmup_epochs": args.warmup_epochs,
        "bn_momentum": args.bn_momentum,
        "bn_recalibrate_steps": args.bn_recalibrate_steps,
        "precision": args.precision,
        "jit_compile": args.jit_compile,
        "distribute": args.distribute,
        "sync_batchnorm": args.sync_batchnorm,
        "seed": args.seed,
        "deterministic": args.deterministic,
        "out": args.out,
        "resume": args.resume,
        "verbose": 2 if args.quiet else None,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    if "preset" not in options and not ({"depth", "blocks"} & set(options)):
        options["preset"] = TrainConfig.preset
    config = TrainConfig.from_dict(options)
    try:
        summary = train(config)
    except TrainingError as err:
        _fail(f"{PROG} train: {err}", code=1)
    print(
        f"test accuracy {summary['test_accuracy']:.4f} | params {summary['params']:,} | "
        f"{summary['epochs']} epochs | {summary['images_per_second'] or 0:.1f} images/s | "
        f"{summary['wall_time_s']:.0f} s | run {config.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from keras_densenet.training import evaluate

    result = evaluate(
        args.model,
        args.dataset,
        split=args.split,
        out=args.out,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        image_size=args.image_size,
        channels=args.channels,
        allow_unsafe=args.allow_unsafe,
    )
    print(f"accuracy {result['accuracy']:.4f} on {result['num_examples']} {args.split} images")
    for name, acc in result["per_class_accuracy"].items():
        print(f"  {name:<20} {acc:.4f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from keras_densenet import export

    path = export.export_savedmodel(
        args.model, args.out, version=args.version, overwrite=args.overwrite
    )
    print(f"exported SavedModel {path}")
    if args.tflite:
        representative = list(_sample_images(200)[0]) if args.tflite == "int8" else None
        tflite = export.export_tflite(
            args.model,
            os.path.join(args.out, f"model_{args.tflite}.tflite"),
            quantization=args.tflite,
            representative_data=representative,
        )
        print(f"exported TFLite {tflite}")
    print(export.tensorflow_serving_command(args.out))
    return 0


def _sample_images(count: int) -> tuple[Any, list[str], list[str]]:
    """The first ``count`` uint8 test images of the embedded sample, labels, names."""
    import numpy as np

    from keras_densenet.data import load_dataset

    dataset, info = load_dataset(
        "fashion_mnist_sample", "test", batch_size=count, normalize=False, shuffle=False
    )
    images, labels = next(iter(dataset))
    names = [info.class_names[int(i)] for i in np.asarray(labels)]
    return np.asarray(images).astype("uint8"), names, list(info.class_names)


def _predict(args: argparse.Namespace) -> int:
    from keras_densenet import export

    if not args.images and not args.sample:
        raise UsageError("give image files or --sample N")
    images: Any = list(args.images)
    truths: list[str | None] = [None] * len(images)
    if args.sample:
        pixels, names, _ = _sample_images(args.sample)
        if images:
            raise UsageError("give either image files or --sample N, not both")
        images, truths = pixels, list(names)
        labels = [f"sample test image {i}" for i in range(len(truths))]
    else:
        labels = list(args.images)
    results = export.predict(args.model, images, top_k=args.top_k)
    for label, truth, top in zip(labels, truths, results, strict=True):
        guesses = ", ".join(f"{name} {prob:.3f}" for name, prob in top)
        suffix = f" (true: {truth})" if truth is not None else ""
        print(f"{label}{suffix}: {guesses}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from keras_densenet.analysis import block_table, format_table
    from keras_densenet.models import build_densenet

    input_shape = tuple(args.input_shape) if args.input_shape else None
    model = build_densenet(
        args.preset,
        **_architecture(args),
        input_shape=input_shape,
        num_classes=args.num_classes,
        memory_efficient=args.memory_efficient,
    )
    if args.json:
        print(json.dumps(block_table(model)))
    else:
        print(format_table(model))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from keras_densenet.tuning import parse_assignments, tune

    options = _read_config(args.config)
    flags = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "image_size": args.image_size,
        "channels": args.channels,
        "download": args.download or None,
        "validation_fraction": args.validation_fraction,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "precision": args.precision,
        "jit_compile": args.jit_compile,
        "seed": args.seed,
        "verbose": 0 if args.quiet else None,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    summary = tune(
        options,
        tuner=args.tuner,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        factor=args.factor,
        ranges=parse_assignments(args.ranges, "--range"),
        fixed=parse_assignments(args.fix, "--fix"),
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


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``keras-densenet`` command.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code (0 on success); errors exit via ``SystemExit``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as err:
        _fail(f"{PROG} {args.command}: error: {err}")
    except KeyboardInterrupt:
        _fail(f"{PROG} {args.command}: interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
