"""One model load at a time in a process.

transformers builds a model under process-wide settings (``torch.set_default_dtype`` to the requested
dtype, the meta device, "do not tie weights yet") and restores them afterwards. Two threads loading at
once (the service warming up a new model while a training job loads its own) interleave those
set-and-restore pairs: a model comes out with its tied head left on the meta device, or the default dtype
stays bfloat16 for the rest of the process. Every load in grouprank (transformers, peft,
sentence-transformers) runs under ``model_loading()``; a thread waits for another's load to finish.
(Code creating float tensors in another thread during a bfloat16 load can still see that dtype for the
load's duration: transformers offers no thread-local setting.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOADS = threading.RLock()  # re-entrant: a load may load another (a base model under its adapter)


@contextmanager
def model_loading() -> Iterator[None]:
    """Hold the process's model-loading lock while the block builds or loads a model."""
    with _LOADS:
        yield
