"""Callbacks of a training run that never leave a half-written or poisoned file.

`AtomicModelCheckpoint` and `AtomicBackupAndRestore` are Keras's own
``ModelCheckpoint`` and ``BackupAndRestore`` with their writes made atomic
(`keras_densenet._io`) and NaN epochs never saved; `ThroughputMeter` measures
images per second.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_densenet import _io


def _finite(logs: Mapping[str, Any] | None) -> bool:
    return all(math.isfinite(float(v)) for k, v in (logs or {}).items() if "loss" in k)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes to a temporary name, then renames.

    A crash while saving leaves the previous file intact, and an epoch whose
    loss is NaN or infinite is never saved.

    Args:
        filepath: The ``.keras`` file to maintain.
        **kwargs: ``keras.callbacks.ModelCheckpoint`` arguments
            (``initial_value_threshold`` carries the best value of a resumed
            run's earlier epochs).
    """

    def __init__(self, filepath: str | os.PathLike, **kwargs: Any) -> None:
        self.final_path = os.fspath(filepath)
        super().__init__(self.final_path, **kwargs)

    def _save_model(self, epoch: int, batch: int | None, logs: Mapping[str, Any]) -> None:
        # Keras decides (best-only, monitor); the write itself is atomic.
        if _finite(logs) and self._should_save_model(epoch, batch, logs, self.final_path):
            _io.save_model(self.model, self.final_path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose files are replaced by rename, never rewritten.

    The weights and the epoch counter are each written to a temporary name and
    renamed into place (weights first), and a non-finite epoch is not backed
    up, so a resumed run starts from the last good epoch.

    A fine-tuning run trains in two phases, each with an optimizer of its
    own (the head alone, then everything): a backup written at the end of
    the first phase, ``phase_start`` epochs in, gives the second its weights
    but not the first optimizer's state.

    Args:
        backup_dir: Directory of the backup.
        phase_start: The epoch the current ``fit`` starts at, when an earlier
            phase's optimizer wrote the backup at that epoch; None otherwise.
    """

    def __init__(self, backup_dir: str | os.PathLike, phase_start: int | None = None) -> None:
        super().__init__(os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.phase_start = phase_start

    def _load_model(self) -> None:
        if self.phase_start is None or not os.path.exists(self._training_metadata_path):
            return super()._load_model()
        epoch = _io.read_json(self._training_metadata_path, "backup metadata")["epoch"]
        if epoch != self.phase_start:
            return super()._load_model()
        # The previous phase's backup: its weights, and the new phase's own optimizer.
        self.model.load_weights(self._weights_path, objects_to_skip=[self.model.optimizer])
        self.model._initial_epoch = epoch
        return None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if _finite(logs):
            super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        _io.save_model(self.model, self._weights_path)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        _io.write_json(self._training_metadata_path, metadata)


class ThroughputMeter(keras.callbacks.Callback):
    """Measures training images per second over each epoch.

    Args:
        batch_size: Global batch size.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.epoch_rates: list[float] = []
        #: Epoch index -> images/s, for the epochs this process trained.
        self.rates_by_epoch: dict[int, float] = {}
        self._start = self._last = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start, self._steps = time.perf_counter(), 0
        self._last = self._start

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._steps += 1
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        # Training steps only: validation and BN recalibration come after the last one.
        elapsed = self._last - self._start
        if self._steps and elapsed > 0:
            self.epoch_rates.append(self._steps * self.batch_size / elapsed)
            self.rates_by_epoch[epoch] = self.epoch_rates[-1]

    def images_per_second(self, first: int = 0, end: int | None = None) -> float | None:
        """Throughput of the epochs after the first (which includes tracing).

        Args:
            first: The first epoch of a phase to measure (its own first
                epoch traces again and is left out too, where it can be).
            end: The epoch after the phase (None: to the end).
        """
        if first == 0 and end is None:
            rates = self.epoch_rates
        else:
            rates = [
                rate
                for epoch, rate in sorted(self.rates_by_epoch.items())
                if epoch >= first and (end is None or epoch < end)
            ]
        rates = rates[1:] or rates
        return float(np.median(rates)) if rates else None


__all__ = ["AtomicBackupAndRestore", "AtomicModelCheckpoint", "ThroughputMeter"]
