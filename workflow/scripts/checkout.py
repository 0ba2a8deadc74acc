"""Imported first by every script: puts the checkout holding `sdo` and `evals` on the path (so
scripts run in any environment that has the dependencies; a conda env need not install the
project), and `log_to` sends the script's logging and any traceback to its `log:` file."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def log_to(path: str) -> None:
    logging.basicConfig(filename=path, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def record_traceback(kind, value, traceback):
        logging.getLogger("script").error("failed", exc_info=(kind, value, traceback))
        sys.__excepthook__(kind, value, traceback)

    sys.excepthook = record_traceback
