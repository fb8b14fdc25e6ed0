"""The issue-6 acceptance comparison on textured dSprites (MS-VAE sec. 4, appendices H and L) at a stated CPU budget.

    OMP_NUM_THREADS=1 python -m bench.stage_two_comparison /tmp/comparison main        # MS-VAE vs the baselines
    OMP_NUM_THREADS=1 python -m bench.stage_two_comparison /tmp/comparison ablations   # + the four ablations

Makes ``WORKDIR`` a git + DVC copy of the project (code, dvc.yaml) with ``docs/stage_two/comparison_params.yaml``'s
settings (10,000 textured dSprites images, 64 x 64 x 3; beta-TCVAE stage one 600 steps; MS-VAE 400 stage-two steps;
beta-TCVAE-L and Big-VAE 1000 steps = MS-VAE's 600 + 400; batch 64; one thread), then runs ``dvc repro report``:
``main`` trains msvae, betatcvae_l, bigvae and evaluates them (factor classifier 800 steps); ``ablations`` adds
c_input, concat (400 steps each), end_to_end (200), z_first (300, Z for the first 150) and re-evaluates all of them
(factor classifier 300 steps). The comparison table is in ``WORKDIR/report/index.html`` and
``WORKDIR/metrics/evaluate.json`` (keys ``compare.<variant>.<metric>``). Measured CPU time (user + system, 2-core
machine shared with other jobs): main 1357 s, ablations 678 s.
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
