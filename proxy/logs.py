"""What the process prints: our own log lines at `server.log_level`, the model libraries'
chatter (weight-loading progress bars, tokenizer warnings) only at debug. A tokenizer's
"sequence length is longer than the specified maximum" reads like an error while it is the
documented behaviour (texts are cut at the model's `max_length`): `crossfade plan` states how
many documents that cuts, once, in its answer."""

from __future__ import annotations

import logging
import os
import sys

LIBRARIES = ("transformers", "sentence_transformers", "huggingface_hub")


def quiet_libraries(level: str) -> None:
    """Silence the model libraries below ERROR unless `level` is debug. Environment first:
    the libraries read it when imported (models load after the config, so they are not yet)."""
    if level == "debug":
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already (a test, a tool): switch it too
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
