"""``python -m pipeline.repro [dvc repro options]``: ``dvc repro`` under one MLflow parent run.

DVC runs each stage in its own process; this wrapper opens the parent run, passes its id to every stage through
``MULTISTAGE_PARENT_RUN_ID`` (so each stage's run nests under it), runs ``dvc repro`` with the options given,
closes the parent (FAILED if DVC failed) and prints the score table, the MLflow UI command and the report path.
``make run`` calls it.
"""

from __future__ import annotations

import subprocess
import sys

from pipeline.summary import print_summary, read_scores
from stages.tracking import log_run_metrics, pipeline_run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = ["dvc", *(argv if argv and argv[0] == "exp" else ["repro", *argv])]
    try:
        with pipeline_run("dvc " + " ".join(command[1:])) as parent:
            completed = subprocess.run(command)
            if completed.returncode != 0:
                raise SystemExit(completed.returncode)
            log_run_metrics(parent, read_scores())
    except SystemExit as stop:
        print(f"\n{' '.join(command)} failed with exit status {stop.code}; see the message above.", file=sys.stderr)
        return int(stop.code or 1)
    print_summary(parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
