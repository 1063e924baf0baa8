"""Resume after preemption: the machine goes away mid-training (a spot VM reclaimed, a Colab
session cut off); launching the same training again continues from the shelf's `latest`.

    python examples/resume.py                # the demonstration: train, get killed, relaunch
    python examples/resume.py train NAME     # the training script itself (what you would run)

The training script needs one argument for this: ShelfCheckpoint(..., resume=True). The
optimizer state, learning-rate schedulers, loop counters and callback states come back too, so
the resumed run takes the same steps the uninterrupted one would have.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import lightning.pytorch as L

import modelshelf as ms
from digits_nets import DigitsCNN, loaders
from modelshelf.integrations.lightning import ShelfCheckpoint

EPOCHS = 8


class Preemption(L.Callback):
    """Stands in for the machine going away: SIGKILL (no hook, no clean-up) once the version
    of epoch ``at`` is on the shelf."""

    def __init__(self, name: str, at: int) -> None:
        self.name, self.at = name, at

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch != self.at:
            return
        while True:  # the background writer commits the version; then the machine is gone
            try:
                if ms.get(f"{self.name}:latest").metadata["epoch"] == self.at:
                    os.kill(os.getpid(), signal.SIGKILL)
            except ms.NotFoundError:
                pass
            time.sleep(0.05)


def train(name: str, preempt_at: int | None) -> None:
    L.seed_everything(0, verbose=False)
    callbacks: list[L.Callback] = [
        ShelfCheckpoint(name, monitor="val_loss", save="all", resume=True)
    ]
    if preempt_at is not None:
        callbacks.append(Preemption(name, preempt_at))
    trainer = L.Trainer(max_epochs=EPOCHS, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(DigitsCNN(), *loaders())


def launch(*args: str) -> int:
    """Run this file's training in a new process, as a scheduler would."""
    return subprocess.run([sys.executable, __file__, "train", *args]).returncode


def demonstrate() -> None:
    name = f"digits-resume-{time.strftime('%Y%m%d-%H%M%S')}"  # a fresh experiment each time
    code = launch(name, "--preempt-at", "2")
    print(f"\nfirst launch: killed (exit code {code}) after epoch 2 was logged")
    code = launch(name)
    print(f"second launch: resumed from {name}:latest, exit code {code}\n")

    print(f"{'version':<36}{'epoch':>6}{'val_loss':>10}  run")
    for v in ms.shelf().versions(name):
        run = v.logged_by()
        assert run is not None
        print(f"{v.ref:<36}{v.metadata['epoch']:>6}{v.metadata['monitored_value']:>10.4f}"
              f"  {run.id} ({run.status})")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        preempt = sys.argv.index("--preempt-at") if "--preempt-at" in sys.argv else None
        train(sys.argv[2], int(sys.argv[preempt + 1]) if preempt else None)
    else:
        demonstrate()
