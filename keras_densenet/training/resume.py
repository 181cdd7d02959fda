"""Whether a run directory can take a run: a new one, or the resumption of its own.

Only files are read (`keras_densenet.rundir`), no TensorFlow: `train` asks
while it holds the directory's lock, and the command line asks first, so a
damaged or mismatched run is refused before seconds of start-up.
"""

from __future__ import annotations

import os

from keras_densenet import rundir
from keras_densenet.training.config import LEGACY_OPTIONS, TrainConfig

#: Options a resumed run may change: it may run longer or with another
#: learning rate (e.g. lower after a NaN loss), print differently, recalibrate
#: BN with more or fewer batches, or live in a moved directory. Anything else
#: would silently change the experiment.
RESUMABLE_CHANGES = frozenset(
    {"resume", "verbose", "epochs", "learning_rate", "bn_recalibrate_steps", "out"}
)


def prepare_run_dir(config: TrainConfig) -> int | None:
    """Checks a run's ``out`` before any file is written; returns the epochs already done.

    A new run needs a directory without a run in it; a resumed run needs the
    same options (`RESUMABLE_CHANGES` aside), a readable backup and history,
    and ``epochs`` at least the epochs already trained. Reads files only (no
    TensorFlow), so the command line asks it before its start-up.

    Args:
        config: The run's options.

    Returns:
        The epochs the backup holds (0 for a new run), or None when a resumed
        run is already complete (nothing to do).

    Raises:
        ValueError: Naming the option or the damaged file.
    """
    out = config.out
    has_run = os.path.exists(os.path.join(out, rundir.CONFIG))
    if has_run and not config.resume:
        raise ValueError(
            f"`out` {out!r} already holds a run: pass `resume=True` to continue it, "
            "or choose another directory."
        )
    if not has_run:
        rundir.check_new_run_dir(out)
    if not (has_run and config.resume):
        return 0
    previous = {**LEGACY_OPTIONS, **rundir.read_config(out)}
    changed = rundir.option_changes(previous, config.to_dict(), RESUMABLE_CHANGES)
    if changed:
        raise ValueError(
            f"`resume` needs the same options as the run in {out!r}; these differ "
            f"(was, now): {changed}."
        )
    done = rundir.epochs_done(out)
    history = os.path.join(out, rundir.HISTORY)
    if os.path.exists(history):
        rundir.read_history(history)  # a corrupted history is named now, not after training
    if done > config.epochs:
        raise ValueError(
            f"The run in {out!r} has already trained {done} epochs: `epochs` must be at least "
            f"{done} to resume it (got {config.epochs}); nothing was changed."
        )
    if done == config.epochs and rundir.read_summary(out) is not None:
        return None
    return done


__all__ = ["RESUMABLE_CHANGES", "prepare_run_dir"]
