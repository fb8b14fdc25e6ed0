"""Stage two compared on textured dSprites (MS-VAE sec. 4, appendices H and L) at a stated CPU budget.

    OMP_NUM_THREADS=1 python -m bench.stage_two_comparison /tmp/comparison main        # MS-VAE vs the baselines
    OMP_NUM_THREADS=1 python -m bench.stage_two_comparison /tmp/comparison ablations   # + the four ablations

Makes ``WORKDIR`` a git + DVC copy of the project with ``docs/stage_two/comparison_params.yaml``'s settings, then
runs ``dvc repro report``: ``main`` trains msvae, betatcvae_l and bigvae and evaluates them; ``ablations`` adds
c_input, concat, end_to_end and z_first and re-evaluates all of them. The comparison table is in
``WORKDIR/report/index.html`` and ``WORKDIR/metrics/evaluate.json`` (keys ``compare.<variant>.<metric>``).
Settings and results: docs/studies/stage-two-comparison.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
PARAMS = PROJECT / "docs" / "stage_two" / "comparison_params.yaml"
MAIN = ["msvae", "betatcvae_l", "bigvae"]
ABLATIONS = ["c_input", "concat", "end_to_end", "z_first"]


def make_workdir(root: Path) -> None:
    root.mkdir(parents=True)
    for name in ("multistage", "stages", "pipeline", "sweep"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(PROJECT / name, root / name)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=root, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("phase", choices=("main", "ablations"))
    args = parser.parse_args(argv)
    root = args.workdir.resolve()
    if not root.exists():
        make_workdir(root)
    params = yaml.safe_load(PARAMS.read_text())
    if args.phase == "main":
        params["stage_two"]["variants"] = MAIN
        params["evaluate"]["classifier"]["steps"] = 800
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run(["dvc", "repro", "report"], cwd=root).returncode


if __name__ == "__main__":
    sys.exit(main())
