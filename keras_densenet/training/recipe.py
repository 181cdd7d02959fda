"""The training recipe: optimizer, learning-rate schedules, precision, XLA, devices.

The paper's recipe (Huang et al., 2017, CIFAR): SGD with Nesterov momentum
0.9, weight decay 1e-4 on kernels, learning rate 0.1 at batch 64 (scaled
linearly with the global batch), divided by 10 at 50% and 75% of training;
cosine decay and a linear warm-up as options.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from keras_densenet._validation import check_float, check_positive_int
from keras_densenet.heads import HEAD_LAYERS
from keras_densenet.training.config import JIT_MODES, TrainConfig

#: The paper's batch size: the learning rate scales linearly from it.
REFERENCE_BATCH = 64


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX), on Linux.

    oneDNN runs bfloat16 convolutions natively there; elsewhere bfloat16 is
    emulated and slower than float32.

    Args:
        cpuinfo: The file listing the CPU's flags (Linux's, by default).

    Returns:
        True if the first ``flags`` line names ``avx512_bf16`` or ``amx_bf16``;
        False otherwise, or where the file cannot be read.
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the visible GPUs (empty without a GPU)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = []
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            found.append(tuple(details.get("compute_capability", (0, 0))))
        return found
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return [tuple(map(int, str(d.compute_capability).split("."))) for d in gpus]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    return []


def resolve_precision(precision: str, *, gpus: list[tuple[int, int]] | None = None) -> str:
    """The dtype policy a ``precision`` option stands for on this machine.

    ``"auto"`` gives ``"mixed_float16"`` where every GPU has compute
    capability 7.0 or newer (tensor cores), and ``"float32"`` elsewhere, CPUs
    with bfloat16 instructions included: measured on two such CPUs,
    mixed_bfloat16 trains DenseNet-121 at 224x224 1.13-1.16x faster, but on
    the sample run (DenseNet-BC-100-12, batch 16) it was no faster end to end
    and tested 1.1 points lower (benchmarks/RESULTS.md, "Precision"), short
    of the "faster at equal accuracy" bar. ``precision="mixed_bfloat16"``
    asks for it (`cpu_has_bfloat16` tells whether the CPU has the
    instructions). Other values are returned as they are.

    Args:
        precision: ``"auto"`` or a policy name.
        gpus: The GPUs' compute capabilities; None asks the backend.

    Returns:
        A Keras dtype policy name.
    """
    if precision != "auto":
        return precision
    gpus = gpu_compute_capabilities() if gpus is None else gpus
    if gpus and min(gpus) >= (7, 0):
        return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Sets the global Keras dtype policy for a block, then restores it.

    Args:
        name: A policy name, e.g. ``"mixed_bfloat16"``, or ``"auto"`` (see
            `resolve_precision`).

    Yields:
        Nothing.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_dtype_policy(resolve_precision(name))
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def make_strategy(config: TrainConfig) -> Any:
    """The ``tf.distribute`` strategy a config asks for, or None.

    Args:
        config: The training options (``distribute``).

    Returns:
        A ``tf.distribute.MirroredStrategy`` for ``distribute="mirrored"``,
        else None.

    Raises:
        ValueError: If ``"mirrored"`` is asked for on another backend than
            TensorFlow.
    """
    if config.distribute != "mirrored":
        return None
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"`distribute='mirrored'` needs the TensorFlow backend (KERAS_BACKEND is "
            f"{keras.backend.backend()!r}); use distribute='data_parallel' on JAX."
        )
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


_MULTI_HOST_JOINED = False


def data_parallel(config: TrainConfig) -> int:
    """Sets a ``keras.distribution.DataParallel`` distribution; returns its device count.

    With ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES``
    and ``KERAS_DISTRIBUTION_PROCESS_ID`` set, the processes first join one
    multi-host JAX runtime (``keras.distribution.initialize``).

    Args:
        config: The training options.

    Returns:
        The number of devices the batch is split over.

    Raises:
        ValueError: If the backend is not JAX.
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "`distribute='data_parallel'` needs the JAX backend (KERAS_BACKEND=jax); "
            f"the backend is {keras.backend.backend()!r}. On TensorFlow use 'mirrored'."
        )
    global _MULTI_HOST_JOINED
    if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") and not _MULTI_HOST_JOINED:
        # Must come before anything touches a JAX device, and only once per process.
        keras.distribution.initialize()
        _MULTI_HOST_JOINED = True
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


def resolve_jit_compile(
    mode: str, strategy: Any = None, precision: str = "float32", gpus: int | None = None
) -> bool:
    """Turns ``"off"|"on"|"auto"`` into a bool for ``model.compile``.

    ``"auto"`` is on where a GPU is present and no strategy is active (on the
    JAX backend always), and off for the known crash of XLA with
    mixed_float16 under MirroredStrategy.

    Args:
        mode: ``"off"``, ``"on"`` or ``"auto"``.
        strategy: The active ``tf.distribute`` strategy, if any.
        precision: The dtype policy name.
        gpus: The number of GPUs; None asks TensorFlow.

    Returns:
        Whether to compile with XLA.

    Raises:
        ValueError: For an unknown mode, or ``"on"`` in the known-crash setting.
    """
    if mode not in JIT_MODES:
        raise ValueError(f"`jit_compile` must be one of {JIT_MODES}, got {mode!r}.")
    if mode == "on":
        if strategy is not None and resolve_precision(precision) == "mixed_float16":
            raise ValueError(
                "XLA with mixed_float16 under MirroredStrategy crashes (keras-team/keras#18666)."
            )
        return True
    if mode == "off" or strategy is not None:
        return False
    if keras.backend.backend() != "tensorflow":
        return keras.backend.backend() == "jax"
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    return gpus > 0


@keras.saving.register_keras_serializable(package="keras_densenet")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scales another schedule up linearly over its first updates.

    The factor rises from ``1 / warmup_steps`` at update 0 to 1 at update
    ``warmup_steps`` (Goyal et al., 2017), the ramp ``CosineDecay`` uses for its
    own ``warmup_steps``; this wraps schedules that have none, such as the
    paper's step schedule.

    Args:
        schedule: The wrapped ``LearningRateSchedule``.
        warmup_steps: Updates over which the rate rises, a positive int.
    """

    def __init__(self, schedule: Any, warmup_steps: int) -> None:
        self.schedule = schedule
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        start = 1.0 / self.warmup_steps
        progress = keras.ops.minimum(step, float(self.warmup_steps)) / self.warmup_steps
        return self.schedule(step) * (start + (1.0 - start) * progress)

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearWarmup:
        schedule = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(schedule, config["warmup_steps"])


@keras.saving.register_keras_serializable(package="keras_densenet")
class BackboneScaledSGD(keras.optimizers.SGD):
    """SGD whose backbone learns at a fraction of the head's learning rate.

    For fine-tuning: the new head starts from random weights and takes the
    full rate, the pretrained backbone ``backbone_lr_scale`` of it. The
    backbone's gradients are scaled, which for SGD with momentum is exactly
    a scaled learning rate (the momentum buffer is linear in rate x
    gradient), and so is its decoupled weight decay. A variable belongs to
    the head when the first part of its path names a head layer.

    Args:
        backbone_lr_scale: The backbone's rate as a fraction of the head's,
            in (0, 1].
        head_layers: Names of the head's layers.
        **kwargs: ``keras.optimizers.SGD`` arguments.
    """

    def __init__(
        self,
        backbone_lr_scale: float = 1.0,
        head_layers: Sequence[str] = HEAD_LAYERS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone_lr_scale = check_float(
            "backbone_lr_scale", backbone_lr_scale, 0.0, 1.0, low_open=True
        )
        self.head_layers = tuple(head_layers)

    def in_backbone(self, variable: Any) -> bool:
        """Whether a variable is the backbone's (not one of ``head_layers``)."""
        return variable.path.split("/")[0] not in self.head_layers

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        if trainable_variables is not None and self.backbone_lr_scale != 1.0:
            grads = [
                g * self.backbone_lr_scale if g is not None and self.in_backbone(v) else g
                for g, v in zip(grads, trainable_variables, strict=True)
            ]
        return super().apply(grads, trainable_variables)

    def _apply_weight_decay(self, variables: Any) -> None:
        if self.weight_decay is None or self.backbone_lr_scale == 1.0:
            return super()._apply_weight_decay(variables)
        full = self.weight_decay
        super()._apply_weight_decay([v for v in variables if not self.in_backbone(v)])
        # The decay is read while the step is traced: the backbone's, at the scaled rate.
        self.weight_decay = full * self.backbone_lr_scale
        try:
            super()._apply_weight_decay([v for v in variables if self.in_backbone(v)])
        finally:
            self.weight_decay = full
        return None

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "backbone_lr_scale": self.backbone_lr_scale,
            "head_layers": list(self.head_layers),
        }


def _lr_schedule(
    config: TrainConfig, base_lr: float, total_steps: int, steps_per_epoch: int
) -> Any:
    warmup = min(round(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if config.schedule == "cosine":
        if warmup:
            return keras.optimizers.schedules.CosineDecay(
                base_lr / warmup,
                decay_steps=max(total_steps - warmup, 1),
                warmup_target=base_lr,
                warmup_steps=warmup,
            )
        return keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=max(total_steps, 1))
    # The schedule is looked up with the number of updates already made, and a
    # step equal to a boundary still gets the earlier value: the update that
    # starts the second half (step total/2) must see lr/10, hence the -1.
    first = max(0, round(total_steps * 0.5) - 1)
    boundaries = [first, max(first + 1, round(total_steps * 0.75) - 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [base_lr, base_lr / 10, base_lr / 100]
    )
    return LinearWarmup(schedule, warmup) if warmup else schedule


def make_optimizer(
    config: TrainConfig,
    total_steps: int,
    global_batch: int,
    steps_per_epoch: int | None = None,
    backbone_lr_scale: float = 1.0,
) -> keras.Optimizer:
    """SGD with Nesterov momentum, the lr schedule and weight decay on kernels.

    Args:
        config: The training options.
        total_steps: Optimizer steps this optimizer makes (the run, or one
            phase of a fine-tuning run: its schedule and warm-up start anew).
        global_batch: Global batch size (for lr scaling).
        steps_per_epoch: Optimizer steps per epoch (for ``warmup_epochs``;
            default ``total_steps / config.epochs``).
        backbone_lr_scale: The backbone's learning rate as a fraction of the
            head's (`BackboneScaledSGD` below 1).

    Returns:
        A Keras optimizer.
    """
    base_lr = config.learning_rate or 0.1 * global_batch / REFERENCE_BATCH
    if steps_per_epoch is None:
        steps_per_epoch = max(1, total_steps // config.epochs)
    arguments = {
        "learning_rate": _lr_schedule(config, base_lr, total_steps, steps_per_epoch),
        "momentum": config.momentum,
        "nesterov": True,
        "weight_decay": config.weight_decay or None,
    }
    if backbone_lr_scale != 1.0:
        optimizer = BackboneScaledSGD(backbone_lr_scale, **arguments)
    else:
        optimizer = keras.optimizers.SGD(**arguments)
    # The paper decays convolution and classifier kernels, not BN scales/offsets.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


__all__ = [
    "REFERENCE_BATCH",
    "BackboneScaledSGD",
    "LinearWarmup",
    "cpu_has_bfloat16",
    "data_parallel",
    "dtype_policy",
    "gpu_compute_capabilities",
    "make_optimizer",
    "make_strategy",
    "resolve_jit_compile",
    "resolve_precision",
]
