"""Shows a transformers/trl training loop on a ``grouprank.progress`` bar (tqdm is switched off)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from transformers import TrainerCallback

from grouprank.progress import console, enabled, progress_bar

_SHOWN = ("loss", "reward", "rewards/format/mean", "rewards/ndcg/mean", "mean_token_accuracy", "learning_rate")


class ProgressCallback(TrainerCallback):
    """One bar per training run, advanced every optimisation step. Each log (loss, reward, ...) is kept in
    ``logs`` for the model's metadata and summarised in one line (it replaces transformers' PrinterCallback)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.logs: list[dict[str, Any]] = []
        self._stack = ExitStack()
        self._bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._bar = self._stack.enter_context(progress_bar(self.description, state.max_steps or None))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.advance()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            self.logs.append({"step": state.global_step, **logs})
            shown = {k.removeprefix("rewards/").removesuffix("/mean"): v for k, v in logs.items() if k in _SHOWN}
            if shown and enabled():
                values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
                console.print(f"{self.description.split()[0]} step {state.global_step}: {values}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the bar (also after a failed run, which never reaches ``on_train_end``)."""
        self._stack.close()
        self._bar = None
