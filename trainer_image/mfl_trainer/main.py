"""``mfl-trainer``: train one model version; the summary goes to stdout and the termination log.

Exit codes: 0 done (or the same version already exists), 2 bad configuration or data, 1 unexpected.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

from .config import load_config_document, parse_config
from .errors import EXIT_UNEXPECTED, TrainerError
from .summary import emit, error_summary, to_json_line
from .threads import limit_threads, thread_budget


class _Progress:
    """Progress lines on stderr, with seconds since start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[mfl-trainer {time.monotonic() - self.started:7.2f}s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    # Spinning OpenMP workers make a fit ~10x slower on a busy node; read when scikit-learn loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    arguments = _parse_arguments(argv)
    progress = _Progress()
    config: Any = None
    try:
        config = parse_config(load_config_document(arguments.config))
        for key in config.ignored_keys:
            progress(f"note: ignoring unknown config field {key!r}")
        # heavy imports (scikit-learn, matplotlib; Dask) after the config is known good
        if config.engine == "dask":
            try:  # only the mfl-trainer-dask image has Dask (requirements/dask.txt): the default one says so
                from .dask_engine import run
            except ImportError as error:
                raise TrainerError(
                    f"engine dask needs the mfl-trainer-dask image (dask, distributed, pandas): {error}; set "
                    "spec.retraining.dask.image to it"
                ) from error
        else:
            from .train import run

        threads = thread_budget()
        progress(f"training {config.model} version {config.version} with {threads} threads")
        with limit_threads(threads):
            summary, code = run(config, progress), 0
    except TrainerError as error:
        progress(f"error: {error}")
        summary, code = error_summary(str(error), config), error.exit_code
    except Exception as error:  # noqa: BLE001 - report anything unexpected in the summary too
        traceback.print_exc()
        summary, code = error_summary(f"unexpected {type(error).__name__}: {error}", config), EXIT_UNEXPECTED
    emit(to_json_line(summary))
    return code


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mfl-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="JSON config file (default: env MFL_TRAINER_CONFIG)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
