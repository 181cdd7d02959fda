"""What each ``keras-densenet`` sub-command does: one library call each.

Every function checks what it can without TensorFlow first, then imports
Keras (`import_keras`) and calls the library.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from keras_densenet.cli.arguments import PROG, UsageError, fail
from keras_densenet.training.config import ARCHITECTURE_OPTIONS, OPTIONS, TrainConfig
from keras_densenet.tuning.space import QUICK, search_role


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
    _architecture_of_source(options)
    if "preset" not in options and not ({"depth", "blocks"} & set(options)):
        options["preset"] = TrainConfig.preset
    config = TrainConfig.from_dict(options)
    from keras_densenet import rundir  # no TensorFlow

    if not config.resume and os.path.exists(os.path.join(config.out, rundir.CONFIG)):
        raise UsageError(
            f"--out {config.out!r} already holds a run: pass --resume to continue it, or choose "
            "another --out"
        )
    if _checked_early(config) is None:
        return _report(rundir.read_summary(config.out) or {}, config.out, complete=True)
    _import_keras()
    from keras_densenet.training import OutOfMemoryError, TrainingError, train

    try:
        summary = train(config)
    except TrainingError as err:
        fail(f"{PROG} train: {err}", code=1, at_once=isinstance(err, OutOfMemoryError))
    return _report(summary, config.out, complete=bool(summary.get("already_complete")))


def _architecture_of_source(options: dict[str, Any]) -> None:
    """``--weights RUN`` with no architecture flags fine-tunes the run's architecture."""
    from keras_densenet import rundir

    source = options.get("weights")
    if not isinstance(source, str) or set(ARCHITECTURE_OPTIONS) & set(options):
        return
    if rundir.is_run_dir(source) and os.path.isfile(os.path.join(source, rundir.CONFIG)):
        try:
            previous = rundir.read_config(source)
        except ValueError as err:
            raise UsageError(f"--weights {source!r}: {err}") from None
        options.update(
            {k: previous[k] for k in ARCHITECTURE_OPTIONS if previous.get(k) is not None}
        )


def _checked_early(config: TrainConfig) -> int | None:
    """What `train` checks first, asked before TensorFlow is imported.

    A resumed run's directory (options, backup, history; in use by another
    process), else the image folder's layout and a writable ``--out``.
    Returns the epochs done, None when a resumed run is complete. Hosts of a
    ``data_parallel`` run each have their own directory: the library checks.
    """
    from keras_densenet import rundir

    if config.distribute == "data_parallel":
        return 0
    if os.path.exists(os.path.join(config.out, rundir.CONFIG)):  # a resumed run
        from keras_densenet.training.resume import prepare_run_dir

        rundir.ensure_writable_dir(config.out, keep=False)  # read-only: one line, exit 2
        with rundir.lock(config.out):
            return prepare_run_dir(config)
    from keras_densenet.data.sources import check_folder_early

    if config.weights is not None:
        from keras_densenet.pretrained import identify

        identify(config.weights)  # exists, and is the format its name says
    fraction = config.validation_fraction or None
    splits = ("train", "test", "validation") if fraction else ("train", "test")
    check_folder_early(config.dataset, config.data_dir, splits, fraction, config.bad_images)
    rundir.check_new_run_dir(config.out)
    rundir.ensure_writable_dir(config.out, keep=False)
    return 0


def _count(number: Any, noun: str) -> str:
    """``"1 epoch"``, ``"10 epochs"``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _report(summary: dict[str, Any], out: str, complete: bool) -> int:
    """The run's last line (and that it was complete already)."""
    if complete:
        epochs = _count(summary.get("epochs"), "epoch")
        print(f"run {out} is already complete ({epochs}): nothing to do")
    score = (
        f"test macro AUROC {summary['test_macro_auroc']:.4f}"
        if summary.get("multi_label")
        else f"test accuracy {summary['test_accuracy']:.4f}"
    )
    trainable = summary.get("trainable_params")
    params = f"{summary['params']:,}" + (f" ({trainable:,} trainable)" if trainable else "")
    print(
        f"{score} | params {params} | "
        f"{_count(summary['epochs'], 'epoch')} | training {summary['images_per_second'] or 0:.1f} "
        "images/s | "
        f"{summary['wall_time_s']:.0f} s | run {out}"
    )
    return 0


def _model_path(args: argparse.Namespace, savedmodel: bool = False) -> None:
    """Refuses a model that cannot load before TensorFlow is imported (seconds of start-up).

    A missing file, a run directory without a model, a file that is not a
    ``.keras`` archive and one carrying a lambda without ``--allow-unsafe``.
    """
    from keras_densenet import rundir
    from keras_densenet.export.versions import savedmodel_dir

    path = args.model
    if savedmodel and os.path.isdir(path) and (savedmodel_dir(path) or not rundir.is_run_dir(path)):
        return  # a SavedModel comes first, and the library checks it
    if not os.path.exists(path):
        raise UsageError(f"model file or directory not found: {path!r}")
    if savedmodel and not path.endswith(".keras") and os.path.isfile(path):
        return  # predict names what it accepts
    rundir.check_model_file(path, allow_unsafe=args.allow_unsafe)


def _writable_out(args: argparse.Namespace) -> None:
    """Refuses an ``--out`` that cannot be written before TensorFlow is imported."""
    from keras_densenet import rundir

    if args.out is not None:
        rundir.ensure_writable_dir(args.out, keep=False)


def _evaluate(args: argparse.Namespace) -> int:
    _model_path(args)
    _writable_out(args)
    _import_keras()
    from keras_densenet.evaluation import evaluate

    names = ("split", "out", "data_dir", "batch_size", "image_size", "channels")
    result = evaluate(
        args.model,
        args.dataset,
        **_options(args, (*names, "validation_fraction", "allow_unsafe")),
    )
    multi = result.get("multi_label", False)
    head = (
        f"macro AUROC {result['macro_auroc']:.4f}"
        if multi
        else f"accuracy {result['accuracy']:.4f}"
    )
    print(f"{head} on {result['num_examples']} {args.split} images")
    extra = f" {'AUROC':>9} {'threshold':>9}" if multi else ""
    print(
        f"  {'label' if multi else 'class':<20} {'recall':>9} {'precision':>9} {'F1':>9}"
        f" {'images':>7}{extra}"
    )
    for name, scores in result["per_label" if multi else "per_class"].items():
        extra = f" {scores['auroc']:>9.4f} {scores['threshold']:>9.4f}" if multi else ""
        print(
            f"  {name:<20} {scores['recall']:>9.4f} {scores['precision']:>9.4f} "
            f"{scores['f1']:>9.4f} {scores['support']:>7}{extra}"
        )
    print(f"  macro F1 {result['macro_f1']:.4f}")
    return 0


def _run_of(args: argparse.Namespace) -> str:
    """The run directory ``--tflite int8`` calibrates from, refused before TensorFlow."""
    from keras_densenet import rundir

    directory = args.model if os.path.isdir(args.model) else os.path.dirname(args.model)
    if args.calibration_dataset is None and not os.path.isfile(
        os.path.join(directory, rundir.CONFIG)
    ):
        raise UsageError(
            f"--tflite int8 needs images to calibrate with: {args.model!r} is not in a run "
            "directory, so pass --calibration-dataset"
        )
    return directory


def _calibration(args: argparse.Namespace) -> Any:
    """int8 calibration images, gathered before anything is written."""
    from keras_densenet.export import calibration_images

    directory = _run_of(args)
    if args.calibration_dataset is None:
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
    _model_path(args)
    if args.format == "onnx":
        _onnx_flags(args)
    if args.version is not None and args.format != "onnx" and not args.overwrite:
        existing = os.path.join(args.out, str(args.version))
        if os.path.exists(existing):
            raise UsageError(
                f"version {args.version} already exists at {existing!r}: pass --overwrite to "
                "replace it, or leave out --version for the next free version"
            )
    if args.tflite == "int8":
        _run_of(args)
    _writable_out(args)
    from keras_densenet import rundir

    if rundir.is_run_dir(args.model):  # a run still training has only its early epochs
        with rundir.lock(args.model, "run directory being exported"):
            return _export_now(args)
    return _export_now(args)


def _onnx_flags(args: argparse.Namespace) -> None:
    """Refuses SavedModel-only flags with ``--format onnx`` and an ONNX file in the way."""
    given = [
        flag
        for flag, value in (
            ("--version", args.version),
            ("--serving-dtype", args.serving_dtype),
            ("--tflite", args.tflite),
            ("--calibration-dataset", args.calibration_dataset),
        )
        if value is not None
    ]
    if not args.fold_batchnorm:
        given.append("--no-fold-batchnorm")
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to SavedModel exports, not to --format onnx (a float32 "
            "graph of raw pixels at the model's size)"
        )
    target = os.path.join(args.out, "model.onnx")
    if os.path.isdir(target):
        raise UsageError(f"{target!r} is a directory: --format onnx writes a file there")
    if os.path.exists(target) and not args.overwrite:
        raise UsageError(f"{target!r} already exists: pass --overwrite to replace it")


def _export_now(args: argparse.Namespace) -> int:
    _import_keras()
    from keras_densenet import export

    representative = _calibration(args) if args.tflite == "int8" else None
    if args.format == "onnx":
        os.makedirs(args.out, exist_ok=True)
        onnx = export.export_onnx(
            args.model, os.path.join(args.out, "model.onnx"), allow_unsafe=args.allow_unsafe
        )
        print(f"exported ONNX {onnx} (input 'images': float32 [N, H, W, C] raw pixels)")
        return 0
    names = ("version", "overwrite", "serving_dtype", "fold_batchnorm", "max_image_pixels")
    before = export.list_versions(args.out) if os.path.isdir(args.out) else []
    path = export.export_savedmodel(
        args.model, args.out, **_options(args, (*names, "allow_unsafe"))
    )
    info = export.read_export_info(path)
    if args.version is None and int(os.path.basename(path)) in before:
        print(
            f"version {os.path.basename(path)} already holds this model with these options: "
            f"{path} (pass --version N to write another)"
        )
    else:
        print(
            f"exported SavedModel {path} (serving dtype {info['serving_dtype']}, "
            f"{info['batchnorm_folded']} BatchNormalizations folded into convolutions)"
        )
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
    _model_path(args, savedmodel=True)
    from keras_densenet.images import read_image_file  # no TensorFlow

    for path in args.images:  # a file that is no image is refused at once
        read_image_file(path, args.max_image_pixels)
    explain_paths = _explain_paths(args)
    _import_keras()
    from keras_densenet import export

    images: Any = list(args.images)
    truths: list[str | None] = [None] * len(images)
    labels = list(args.images)
    if args.sample:
        images, names = _sample_images(args.sample)
        truths = list(names)
        labels = [f"sample test image {i}" for i in range(len(truths))]
    names, probabilities, thresholds = export.predict_scores(
        args.model,
        images,
        max_image_pixels=args.max_image_pixels,
        allow_unsafe=args.allow_unsafe,
    )
    if thresholds is not None:  # multi-label: every label at or above its threshold
        results = export.labels_above(names, probabilities, thresholds)
    else:
        results = export.top_classes(names, probabilities, args.top_k)
    for label, truth, top in zip(labels, truths, results, strict=True):
        guesses = ", ".join(f"{name} {prob:.3f}" for name, prob in top)
        if thresholds is not None:
            guesses = f"labels [{guesses or 'none above their thresholds'}]"
        suffix = f" (true: {truth})" if truth is not None else ""
        print(f"{label}{suffix}: {guesses}")
    if explain_paths:
        from keras_densenet.explain import write_explanations
        from keras_densenet.export.model import resolve_model

        model, _ = resolve_model(args.model, allow_unsafe=args.allow_unsafe)
        for path in write_explanations(
            model,
            images,
            explain_paths,
            overwrite=args.overwrite,
            max_image_pixels=args.max_image_pixels,
        ):
            print(f"wrote {path}")
    return 0


def _explain_paths(args: argparse.Namespace) -> list[str]:
    """``--explain``'s files, refused before TensorFlow: a SavedModel, a file in the way."""
    if args.explain is None:
        if args.overwrite:
            raise UsageError("--overwrite replaces --explain files: give --explain OUT_DIR")
        return []
    from keras_densenet import rundir
    from keras_densenet.explain import check_explanation_paths, explanation_paths
    from keras_densenet.export.versions import savedmodel_dir

    if os.path.isdir(args.model) and savedmodel_dir(args.model):
        raise UsageError(
            "--explain needs the Keras model (a .keras file or run directory): a SavedModel "
            "has no gradients of its features"
        )
    if os.path.isfile(args.explain):
        raise UsageError(f"--explain {args.explain!r} is a file, not a directory")
    rundir.ensure_writable_dir(args.explain, "explain", keep=False)
    labels = args.images or [f"sample_{i}" for i in range(args.sample)]
    paths = explanation_paths(args.explain, labels)
    try:
        check_explanation_paths(paths, args.overwrite)
    except ValueError as err:
        raise UsageError(str(err).replace("overwrite (--overwrite)", "--overwrite")) from None
    return paths


def _summary(args: argparse.Namespace) -> int:
    import json

    from keras_densenet.architecture import resolve_config  # no TensorFlow

    architecture = _options(
        args, ("depth", "blocks", "growth_rate", "compression", "bottleneck", "dropout_rate")
    )
    architecture["input_shape"] = tuple(args.input_shape) if args.input_shape else None
    architecture["num_classes"] = args.num_classes
    resolve_config(args.preset, **architecture)  # a bad architecture is refused at once
    _import_keras()
    from keras_densenet.analysis import block_table, format_table
    from keras_densenet.models import build_densenet

    model = build_densenet(
        args.preset, **architecture, memory_efficient=bool(args.memory_efficient)
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


#: `TrainConfig` options that ``tune`` passes on to every trial.
_TUNE_TRAIN_OPTIONS = (
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
)


def _tune(args: argparse.Namespace) -> int:
    ranges = parse_assignments(args.ranges, "--range")
    fixed = parse_assignments(args.fix, "--fix")
    options = _read_config(args.config)
    options.update(_options(args, _TUNE_TRAIN_OPTIONS))
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
    if search_role() != "worker":  # the chief owns the directory
        from keras_densenet import rundir

        rundir.check_tuning_dir(args.out)  # never a training run's directory
        _writable_out(args)
    _import_keras()
    from keras_densenet.tuning import tune

    summary = tune(
        base,
        tuner=args.tuner,
        max_trials=max_trials,
        max_epochs=max_epochs,
        factor=args.factor or (QUICK["factor"] if args.quick else 3),
        ranges=ranges,
        fixed=fixed,
        max_params=args.max_params,
        out=args.out,
        overwrite=args.overwrite,
    )
    if summary["role"] == "worker":
        print(f"worker {summary['tuner_id']} finished | search in {args.out}")
        return 0
    _report_search(summary)
    return 0


def _report_search(summary: dict[str, Any]) -> None:
    """The search's last line: the best trial and how to train it (exit 1 if none)."""
    counts = (
        f"{summary['trials']} trials: {summary['completed']} completed, "
        f"{summary['pruned']} pruned, {summary['failed']} failed"
    )
    best = summary["best"]
    if best is None:
        fail(f"{PROG} tune: no trial completed ({counts}); see {summary['results_csv']}", 1)
    arch = best["architecture"]
    layout = f"L={arch['depth']}" if arch["depth"] else f"blocks {arch['blocks']}"
    print(
        f"best {best['objective'].replace('_', ' ')} {best['score']:.4f} "
        f"(trial {best['trial_id']}: {layout}, "
        f"k={arch['growth_rate']}, theta={arch['compression']:.2f}, "
        f"{best['trainable_params']:,} params) | {counts} | {summary['wall_time_s']:.0f} s | "
        f"train it: {PROG} train --config {summary['best_config']}"
    )


def _convert_weights(args: argparse.Namespace) -> int:
    if not args.out.endswith(".weights.h5"):
        raise UsageError(f"the output must be a Keras .weights.h5 file, got {args.out!r}")
    if not os.path.isfile(args.source):
        raise UsageError(f"PyTorch checkpoint not found: {args.source!r}")
    if os.path.isdir(args.out):
        raise UsageError(f"the output {args.out!r} is a directory")
    if os.path.exists(args.out) and not args.overwrite:
        raise UsageError(f"the output {args.out!r} already exists: pass --overwrite to replace it")
    _import_keras()
    from keras_densenet import _io
    from keras_densenet.architecture import TORCH_BN_EPSILON
    from keras_densenet.models import build_densenet
    from keras_densenet.weights import load_torch_weights

    model = build_densenet(
        args.preset,
        num_classes=args.num_classes,
        include_top=not args.no_top,
        bn_epsilon=TORCH_BN_EPSILON,
    )
    load_torch_weights(model, args.source)
    _io.save_model(model, args.out)
    print(
        f"wrote {args.out}: build_densenet({args.preset!r}, bn_epsilon={TORCH_BN_EPSILON}"
        f"{', include_top=False' if args.no_top else ''}"
        f"{f', num_classes={args.num_classes}' if args.num_classes and not args.no_top else ''}"
        f", weights={args.out!r})"
    )
    return 0


#: Sub-command name -> the function that runs it.
COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "summary": _summary,
    "tune": _tune,
    "export": _export,
    "predict": _predict,
    "convert-weights": _convert_weights,
}

__all__ = ["COMMANDS", "parse_assignments"]
