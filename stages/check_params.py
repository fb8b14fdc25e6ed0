"""DVC stage ``check_params``: validate every section of params.yaml before any other stage runs.

``dvc repro`` deletes a stage's outputs (its uncached metrics and plots included) just before it runs the stage's
command, so a stage that refused a bad param itself would already have lost its previous outputs. This stage runs
first instead: ``prepare`` and every ``chain@<name>`` depend on its output, so every other stage comes after it in
``dvc repro`` / ``dvc exp run``, and a bad value anywhere stops the pipeline here, with one message naming the key
and exit 2, before DVC touches any other stage's outputs.

Its output ``checks/params.ok`` holds a constant text: rewritten with the same bytes after every successful check,
it never makes a downstream stage rerun (each stage still reruns on its own params, as before).

The checks are the stages' own: each section goes through the loader its stage calls (params models, the
stage-one model options of every sub-section, the dataset selection, the chain graphs, the runtime device).
"""

from __future__ import annotations

from pathlib import Path

from stages.common import (
    PARAMS_FILE,
    ParamsError,
    atomic_write_bytes,
    load_runtime,
    load_section,
    read_params_file,
    run_cli,
)

STAMP = Path("checks/params.ok")
STAMP_TEXT = b"params.yaml passed python -m stages.check_params\n"


def check_all(params_file: str | Path = PARAMS_FILE) -> list[str]:
    """Validate every section with its stage's loader; the names of the sections checked. The first bad section
    raises :class:`ParamsError` (its message names the key)."""
    from multistage.train import select_device
    from stages import (
        chain,
        evaluate,
        make_pairs,
        prepare,
        report,
        train_stage_one,
        train_stage_two,
    )

    params_file = str(params_file)
    params = read_params_file(params_file)
    runtime = load_runtime(params_file)
    try:
        select_device(runtime.device)
    except ValueError as error:
        raise ParamsError(f"{params_file}: bad value for 'runtime.device': {error}") from None
    prepare.check_selection(load_section(prepare.PrepareParams, "prepare", params_file))
    train_stage_one.load_params(params_file)
    load_section(make_pairs.PairsParams, "pairs", params_file)
    train_stage_two.load_params(params_file)
    load_section(evaluate.EvaluateParams, "evaluate", params_file)
    report.registry_params(params, params_file)
    checked = ["runtime", "prepare", "stage_one", "pairs", "stage_two", "evaluate", "registry"]
    chains = params.get("chains") or {}
    if not isinstance(chains, dict):
        raise ParamsError(
            f"{params_file}: section 'chains' must be a mapping of chain names, got {type(chains).__name__}"
        )
    for name in chains:
        chain.load_params(name, params_file)
        checked.append(f"chains.{name}")
    return checked


def main(params_file: str | Path = PARAMS_FILE) -> list[str]:
    checked = check_all(params_file)
    atomic_write_bytes(STAMP, STAMP_TEXT)
    print(f"check_params: {', '.join(checked)} valid")
    return checked


if __name__ == "__main__":
    run_cli(main)
