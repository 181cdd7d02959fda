"""`TrainConfig`: every option of a training run, typed, bounded and documented.

Each field carries its own rule (type, bounds or choices) and help text in its
metadata; `TrainConfig.validate` checks every field against its rule, then the
combinations, so a bad value (from Python, a ``--config`` JSON file or the
command line) fails with one message naming the option, the value and what
is allowed, before anything is read or written. The command line builds its
``train`` flags from the same metadata (`OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from keras_densenet._validation import Rule
from keras_densenet.architecture import (
    BN_MOMENTUM,
    MAX_BLOCK_LAYERS,
    MAX_WIDTH,
    RECALIBRATION_STEPS,
    resolve_config,
)
from keras_densenet.presets import PRESETS

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
JIT_MODES = ("off", "on", "auto")
SCHEDULES = ("step", "cosine")
DISTRIBUTE = (None, "mirrored", "data_parallel")
VERBOSITY = (0, 1, 2)
#: The largest image side the pipeline resizes to.
MAX_IMAGE_SIDE = 8192


def _option(default: Any, rule: Rule) -> Any:
    # Runs while the class is defined (at import), before mutmut can switch a
    # mutant on, so tests/mutation.sh could never see one here.
    return dataclasses.field(default=default, metadata={"rule": rule})  # pragma: no mutate


_ARCH = "architecture (overrides the preset's values)"
_DATA = "data"
_OPT = (
    "optimization (defaults measured for short runs; the paper's recipe: "
    "--schedule step --warmup-epochs 0 --label-smoothing 0)"
)
_BN = "batch normalization"
_FINE = "fine-tuning (start from pretrained weights; the head is new)"
#: What ``class_weight`` may say.
CLASS_WEIGHTS = ("balanced",)
#: The dataset a run uses when none is given.
DEFAULT_DATASET = "fashion_mnist_sample"
#: What ``normalization`` may say.
NORMALIZATIONS = ("auto", "dataset", "imagenet")


@dataclasses.dataclass
class TrainConfig:
    """Options of a training run; `train` accepts this or a plain dict of it.

    Attributes:
        preset: Architecture preset (see `PRESETS`); None with ``blocks`` or
            ``depth`` for a custom one.
        depth, blocks, growth_rate, compression, bottleneck, dropout_rate:
            Architecture overrides of the preset (None keeps the preset's).
        memory_efficient: Recompute each dense layer in the backward pass.
        weights: Pretrained weights for the backbone (see
            `keras_densenet.pretrained`); the head is new, sized to the
            dataset's classes.
        freeze_epochs: Epochs that train the head alone (the backbone frozen,
            its BatchNorms in inference mode) before everything trains;
            ``epochs`` keeps the backbone frozen throughout.
        backbone_lr_scale: The backbone's learning rate as a fraction of the
            head's once it trains, in (0, 1].
        normalization: The model's input normalization: ``"dataset"``,
            ``"imagenet"``, or ``"auto"`` (what ``weights`` expect, else the
            dataset's statistics).
        bn_momentum: Momentum of the BatchNormalization moving statistics
            (Keras convention, default 0.9; keras.applications uses 0.99).
        bn_recalibrate_steps: Training batches (without augmentation) from
            which every BN layer's statistics are recomputed before each
            validation pass and for the final model (PreciseBN, see
            `keras_densenet.batchnorm`); 0 turns recalibration off.
        dataset: A `keras_densenet.data.load_dataset` name or image folder.
        labels: A label file (several labels per image, see
            `keras_densenet.data.labels`); it becomes ``dataset``, so give
            one or the other.
        class_weight: ``"balanced"`` weighs the loss of each class by its
            rarity among the training examples (multi-label: each label's
            positive examples by its negatives over its positives); None
            weighs every example alike.
        data_dir: Where the data lives (TFDS dir, IDX dir or folder parent).
        download: Allow TFDS to download missing data.
        image_size: Optional ``(height, width)`` resize; the model input
            otherwise follows the dataset.
        channels: Optional channel conversion (3 feeds grayscale to RGB stems).
        bad_images: What to do with an image-folder file that is empty,
            truncated or not an image: ``"error"`` (stop, naming it) or
            ``"skip"`` (leave it out, with a warning that counts them).
        validation_fraction: Part of the training split held out for
            validation (best model choice); 0 validates on the test split.
        epochs: Number of epochs.
        batch_size: Per-replica batch size (global = this x replicas).
        learning_rate: Base learning rate; None means ``0.1 x global batch / 64``.
        momentum: SGD momentum (Nesterov).
        weight_decay: Decoupled weight decay applied to kernels only.
        schedule: ``"cosine"`` (the default) or ``"step"`` (lr / 10 at 50% and
            75% of training, the paper's).
        warmup_epochs: Epochs of linear learning-rate warm-up (may be
            fractional); 0 for none, as in the paper.
        label_smoothing: Label smoothing in [0, 1); 0 as in the paper.

        precision: ``"float32"``, ``"mixed_float16"``, ``"mixed_bfloat16"`` or
            ``"auto"``: mixed_float16 on a GPU of compute capability 7.0 or
            newer, float32 elsewhere, bfloat16 CPUs included (see
            `keras_densenet.training.recipe.resolve_precision`).
        jit_compile: ``"off"``, ``"on"`` or ``"auto"`` (on where a GPU is
            present and no distribution strategy is active).
        distribute: None, ``"mirrored"`` (``tf.distribute.MirroredStrategy``
            over all local GPUs; TensorFlow backend) or ``"data_parallel"``
            (``keras.distribution.DataParallel`` over all devices; JAX
            backend, and across hosts when ``KERAS_DISTRIBUTION_*`` is set).
        sync_batchnorm: Synchronize BN statistics across replicas.
        steps_per_epoch: Optional cap on training steps per epoch.
        seed: Seed of weights, shuffling and augmentation.
        deterministic: Also ask TensorFlow for deterministic ops.
        out: The run directory.
        resume: Continue a killed run in ``out`` from its last finished epoch.
        verbose: ``model.fit`` verbosity: 0 silent, 1 progress bar, 2 one
            line per epoch.

    The defaults of ``schedule``, ``warmup_epochs`` and ``label_smoothing``
    (cosine, 1 epoch, 0.1) were chosen by measurement for short runs
    (``benchmarks/RESULTS.md``, the recipe grids); the paper's 300-epoch recipe
    is ``schedule="step", warmup_epochs=0, label_smoothing=0``.

    Raises:
        TypeError: For an option of the wrong type (on construction).
        ValueError: For an option out of range, or options that do not fit
            together (on construction).
    """

    preset: str | None = _option(
        "densenet_bc_100_12",
        Rule("choice", "architecture preset", choices=tuple(PRESETS), optional=True, group=_ARCH),
    )
    depth: int | None = _option(
        None,
        Rule(
            "int",
            "depth L of the 3-block CIFAR layout",
            1,
            6 * MAX_BLOCK_LAYERS + 4,
            optional=True,
            group=_ARCH,
        ),
    )
    blocks: Sequence[int] | None = _option(
        None,
        Rule(
            "ints",
            "layers per dense block, e.g. 6,12,24,16",
            high=MAX_BLOCK_LAYERS,
            optional=True,
            group=_ARCH,
        ),
    )
    growth_rate: int | None = _option(
        None, Rule("int", "growth rate k", 1, MAX_WIDTH, optional=True, group=_ARCH)
    )
    compression: float | None = _option(
        None,
        Rule(
            "float",
            "transition compression theta in (0, 1]",
            0.0,
            1.0,
            low_open=True,
            optional=True,
            group=_ARCH,
        ),
    )
    bottleneck: bool | None = _option(
        None, Rule("bool", "1x1 bottleneck convolutions", optional=True, group=_ARCH)
    )
    dropout_rate: float | None = _option(
        None,
        Rule(
            "float", "dropout rate in [0, 1)", 0.0, 1.0, high_open=True, optional=True, group=_ARCH
        ),
    )
    memory_efficient: bool = _option(
        False,
        Rule("bool", "recompute each dense layer in the backward pass to save memory", group=_ARCH),
    )
    bn_momentum: float = _option(
        BN_MOMENTUM,
        Rule(
            "float",
            "BatchNorm moving-average momentum in [0, 1), Keras convention",
            0.0,
            1.0,
            high_open=True,
            group=_BN,
        ),
    )
    bn_recalibrate_steps: int = _option(
        RECALIBRATION_STEPS,
        Rule(
            "int",
            "batches used to recompute BatchNorm statistics before each validation and for "
            "the final model (PreciseBN); 0 turns it off",
            0,
            1_000_000,
            group=_BN,
        ),
    )
    dataset: str = _option(
        DEFAULT_DATASET,
        Rule(
            "str",
            "fashion_mnist_sample (embedded), fashion_mnist, mnist, cifar10, cifar100, any TFDS "
            "image-classification name, or an image folder",
            group=_DATA,
        ),
    )
    labels: str | None = _option(
        None,
        Rule(
            "path",
            "a label file: CSV with columns image,labels[,split], several labels per image "
            "separated by |, image paths relative to the file; replaces --dataset",
            optional=True,
            group=_DATA,
        ),
    )
    class_weight: str | None = _option(
        None,
        Rule(
            "choice",
            "balanced: weigh each class by its rarity in training (multi-label: each label's "
            "positives by its negatives over its positives)",
            choices=CLASS_WEIGHTS,
            optional=True,
            group=_DATA,
        ),
    )
    data_dir: str | None = _option(
        None,
        Rule(
            "path",
            "TFDS data dir, IDX directory or image-folder parent",
            optional=True,
            group=_DATA,
        ),
    )
    download: bool = _option(
        False, Rule("bool", "allow TFDS to download missing data", group=_DATA)
    )
    image_size: Sequence[int] | None = _option(
        None,
        Rule(
            "ints",
            "resize images to HEIGHT,WIDTH",
            high=MAX_IMAGE_SIDE,
            length=2,
            optional=True,
            group=_DATA,
        ),
    )
    channels: int | None = _option(
        None,
        Rule(
            "choice",
            "convert images to 1 or 3 channels",
            choices=(1, 3),
            optional=True,
            group=_DATA,
        ),
    )
    bad_images: str = _option(
        "error",
        Rule(
            "choice",
            "an empty, truncated or non-image file in an image folder: error (stop, naming it) "
            "or skip (leave it out with a warning)",
            choices=("error", "skip"),
            group=_DATA,
        ),
    )
    validation_fraction: float = _option(
        0.1,
        Rule(
            "float",
            "part of train held out for validation; 0 validates on test",
            0.0,
            1.0,
            high_open=True,
            group=_DATA,
        ),
    )
    epochs: int = _option(30, Rule("int", "epochs", 1, 100_000, group=_OPT))
    batch_size: int = _option(64, Rule("int", "per-replica batch size", 1, 65_536, group=_OPT))
    learning_rate: float | None = _option(
        None,
        Rule(
            "float",
            "base learning rate; default 0.1 x global batch / 64",
            0.0,
            math.inf,
            low_open=True,
            optional=True,
            group=_OPT,
        ),
    )
    momentum: float = _option(
        0.9, Rule("float", "Nesterov momentum", 0.0, 1.0, high_open=True, group=_OPT)
    )
    weight_decay: float = _option(
        1e-4, Rule("float", "weight decay on kernels", 0.0, 1.0, high_open=True, group=_OPT)
    )
    schedule: str = _option(
        "cosine",
        Rule(
            "choice",
            "learning-rate schedule: cosine, or step (/10 at 50% and 75%, the paper's)",
            choices=SCHEDULES,
            group=_OPT,
        ),
    )
    warmup_epochs: float = _option(
        1.0,
        Rule(
            "float",
            "epochs of linear learning-rate warm-up, may be fractional",
            0.0,
            100_000.0,
            group=_OPT,
        ),
    )
    label_smoothing: float = _option(
        0.1, Rule("float", "label smoothing in [0, 1)", 0.0, 1.0, high_open=True, group=_OPT)
    )
    weights: str | None = _option(
        None,
        Rule(
            "path",
            "pretrained weights for the backbone: a keras.applications .h5, a torchvision/timm "
            ".pth or .safetensors, a keras-hub backbone (.keras or preset directory), or a "
            ".keras file or run directory of keras_densenet",
            optional=True,
            group=_FINE,
        ),
    )
    freeze_epochs: int = _option(
        0,
        Rule(
            "int",
            "epochs that train the head only (backbone frozen, its BatchNorms in inference "
            "mode) before the whole network trains; equal to --epochs keeps it frozen",
            0,
            100_000,
            group=_FINE,
        ),
    )
    backbone_lr_scale: float = _option(
        1.0,
        Rule(
            "float",
            "the backbone's learning rate as a fraction of the head's once it trains, in (0, 1]",
            0.0,
            1.0,
            low_open=True,
            group=_FINE,
        ),
    )
    normalization: str = _option(
        "auto",
        Rule(
            "choice",
            "input normalization in the model: dataset (the training images' mean and std), "
            "imagenet, or auto (what --weights was trained with, else the dataset's)",
            choices=NORMALIZATIONS,
            group=_FINE,
        ),
    )
    precision: str = _option(
        "float32",
        Rule(
            "choice",
            "dtype policy; auto: mixed_float16 on GPUs of compute capability >= 7.0, "
            "else float32 (mixed_bfloat16 on a CPU only when asked)",
            choices=PRECISIONS,
        ),
    )
    jit_compile: str = _option(
        "auto",
        Rule("choice", "XLA (auto: on with a GPU and no strategy)", choices=JIT_MODES),
    )
    distribute: str | None = _option(
        None,
        Rule(
            "choice",
            "mirrored: tf.distribute.MirroredStrategy over all local GPUs (TensorFlow); "
            "data_parallel: keras.distribution.DataParallel over all devices and hosts (JAX)",
            choices=DISTRIBUTE,
            optional=True,
        ),
    )
    sync_batchnorm: bool = _option(False, Rule("bool", "synchronize BN statistics across replicas"))
    steps_per_epoch: int | None = _option(
        None, Rule("int", "cap training steps per epoch", 1, 10_000_000, optional=True, group=_OPT)
    )
    seed: int | None = _option(
        None,
        Rule("int", "seed of weights, shuffling and augmentation", 0, 2**31 - 1, optional=True),
    )
    deterministic: bool = _option(False, Rule("bool", "deterministic TensorFlow ops (with --seed)"))
    out: str = _option("runs/default", Rule("path", "run directory"))
    resume: bool = _option(False, Rule("bool", "continue the run in --out"))
    verbose: int = _option(
        1,
        Rule("choice", "0 silent, 1 progress bar, 2 one line per epoch", choices=VERBOSITY),
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every option, then their combinations; no TensorFlow op runs.

        Sequences are normalized to tuples.

        Raises:
            TypeError: Naming the option, for a value of the wrong type.
            ValueError: Naming the option and what is allowed, for a value out
                of range or options that do not fit together.
        """
        for field in dataclasses.fields(self):
            rule: Rule = field.metadata["rule"]
            setattr(self, field.name, rule.check(field.name, getattr(self, field.name)))
        if self.labels is not None:
            if self.dataset not in (DEFAULT_DATASET, self.labels):
                raise ValueError(
                    f"`labels` ({self.labels!r}) gives the data: leave out `dataset` "
                    f"({self.dataset!r})."
                )
            if not self.labels.lower().endswith(".csv"):
                raise ValueError(
                    "`labels` must be a .csv label file (image,labels[,split]), got "
                    f"{self.labels!r}."
                )
            self.dataset = self.labels
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be at most `epochs`={self.epochs}, got {self.warmup_epochs}."
            )
        if self.deterministic and self.seed is None:
            raise ValueError(
                "`deterministic` makes a run repeat itself exactly: it needs a `seed`."
            )
        if self.freeze_epochs > self.epochs:
            raise ValueError(
                f"`freeze_epochs` must be at most `epochs`={self.epochs}, got {self.freeze_epochs}."
            )
        if self.weights is None and (self.freeze_epochs or self.backbone_lr_scale != 1.0):
            what = "freeze_epochs" if self.freeze_epochs else "backbone_lr_scale"
            raise ValueError(
                f"`{what}` fine-tunes pretrained weights: it needs `weights` (a weights file "
                "or run directory)."
            )
        if (
            self.precision in ("mixed_float16", "auto")
            and self.distribute == "mirrored"
            and self.jit_compile == "on"
        ):
            raise ValueError(
                "`jit_compile='on'` with `precision='mixed_float16'` (or 'auto') and "
                "`distribute='mirrored'` crashes in Keras 3 (keras-team/keras#18666, #20763): "
                "use jit_compile 'off'/'auto', mixed_bfloat16, or no strategy."
            )
        # Architecture arguments are checked by the model builder, without building.
        resolve_config(self.preset, **self.architecture(), input_shape=self._probe_shape())

    def architecture(self) -> dict[str, Any]:
        """The architecture overrides, as ``build_densenet`` keyword arguments."""
        return {
            "depth": self.depth,
            "blocks": tuple(self.blocks) if self.blocks is not None else None,
            "growth_rate": self.growth_rate,
            "compression": self.compression,
            "bottleneck": self.bottleneck,
            "dropout_rate": self.dropout_rate,
        }

    def _probe_shape(self) -> tuple[int, int, int] | None:
        if self.image_size is None:
            return None
        return (*(int(s) for s in self.image_size), self.channels or 3)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from a dict (e.g. a JSON file), refusing unknown keys.

        Args:
            options: Option name -> value.

        Returns:
            The validated config.

        Raises:
            TypeError: If ``options`` is not a mapping, or a value has the
                wrong type.
            ValueError: For unknown keys or values out of range.
        """
        if not isinstance(options, Mapping):
            raise TypeError(
                f"Training options must be a dict of option names, got {type(options).__name__}."
            )
        cls._check_names(options)
        return cls(**dict(options))

    @classmethod
    def _check_names(cls, names: Iterable[str]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"Unknown training options {unknown}; known: {sorted(known)}.")

    @classmethod
    def coerce(cls, config: TrainConfig | Mapping[str, Any]) -> TrainConfig:
        """``config`` itself if it is a `TrainConfig`, else `from_dict` of it."""
        return config if isinstance(config, cls) else cls.from_dict(config)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some options changed.

        Raises:
            TypeError: As the constructor.
            ValueError: As the constructor, and for unknown option names.
        """
        self._check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        out = dataclasses.asdict(self)
        for key in ("blocks", "image_size"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


#: The options that say which network a run trains.
ARCHITECTURE_OPTIONS = (
    "preset",
    "depth",
    "blocks",
    "growth_rate",
    "compression",
    "bottleneck",
    "dropout_rate",
)
#: Option name -> `Rule`, in declaration order (the command line's flags).
OPTIONS: Mapping[str, Rule] = MappingProxyType(
    {f.name: f.metadata["rule"] for f in dataclasses.fields(TrainConfig)}
)
#: Options a run written before they existed ran with, at these values.
LEGACY_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {
        "bn_momentum": 0.99,
        "warmup_epochs": 0.0,
        "bad_images": "error",
        "weights": None,
        "freeze_epochs": 0,
        "backbone_lr_scale": 1.0,
        "normalization": "auto",
        "labels": None,
        "class_weight": None,
    }
)

__all__ = [
    "ARCHITECTURE_OPTIONS",
    "CLASS_WEIGHTS",
    "DEFAULT_DATASET",
    "DISTRIBUTE",
    "JIT_MODES",
    "LEGACY_OPTIONS",
    "NORMALIZATIONS",
    "OPTIONS",
    "PRECISIONS",
    "SCHEDULES",
    "Rule",
    "TrainConfig",
]
