"""A progress bar that counts optimizer steps: step n / max_steps, time per step, ETA and the key metrics."""

from __future__ import annotations

from datetime import timedelta

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomBarColumn
from rich.progress import ProgressColumn, TextColumn
from rich.text import Text

# Shown after the bar: label -> (metric in trainer.callback_metrics, format).
SHOWN = {
    "reward": ("train/reward", ".1f"),
    "val acc": ("val/accuracy", ".3f"),
    "tok/s": ("train/rollout_tokens_per_s", ".0f"),  # rollout tokens per second
}


class StepsColumn(ProgressColumn):
    """`step n/max_steps`."""

    def render(self, task) -> Text:
        total = "?" if task.total is None or task.total == float("inf") else int(task.total)
        return Text(f"step {int(task.completed)}/{total}", style="bold")


class EtaColumn(ProgressColumn):
    """Seconds per step and time left, from the steps done since this bar started (a resumed run included)."""

    max_refresh = 1.0

    def render(self, task) -> Text:
        done = task.completed - task.fields.get("first", 0)
        elapsed = task.elapsed
        if done <= 0 or not elapsed or task.total is None or task.total == float("inf"):
            return Text("--s/step ETA -:--:--", style="dim")
        per_step = elapsed / done
        eta = timedelta(seconds=int(per_step * max(0.0, task.total - task.completed)))
        return Text(f"{per_step:.1f}s/step ETA {eta}", style="dim")


class StepProgressBar(RichProgressBar):
    """Rich progress over optimizer steps (RL runs are `max_steps` long; epochs mean nothing here)."""

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "train"

    def _add_task(self, total_batches, description: str, visible: bool = True):
        return self.progress.add_task(
            description, total=total_batches, visible=visible, first=self.trainer.global_step
        )

    def configure_columns(self, trainer) -> list:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                bar_width=20,
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            StepsColumn(),
            EtaColumn(),
        ]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        """The metrics of SHOWN that exist so far, formatted."""
        metrics = trainer.callback_metrics
        return {
            label: format(float(metrics[key]), fmt) for label, (key, fmt) in SHOWN.items() if key in metrics
        }
