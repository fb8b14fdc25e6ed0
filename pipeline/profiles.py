"""``python -m pipeline.profiles NAME``: named sets of params (``profiles/NAME.yaml``), e.g. ``paper`` and ``cpu``.

A profile is a partial params tree: the leaves it lists replace params.yaml's, everything else is kept. Three ways
to use one, each validated first by the stages' own validators (an unknown key or a bad value is one error naming
it, and nothing is written):

    python -m pipeline.profiles paper                  # prints the `dvc exp run -S ...` command that runs it
    python -m pipeline.profiles paper --json           # the overrides as JSON, for the Prefect deployment:
        prefect deployment run multistage-pipeline/pipeline -p overrides="$(python -m pipeline.profiles paper --json)"
    python -m pipeline.profiles paper --apply          # writes the leaves into params.yaml (comments kept)

``--set key=value`` (repeatable) adds or replaces leaves on top of the profile, e.g. the path a data set is read
from: ``python -m pipeline.profiles jointvae_mnist --set prepare.mnist_idx.images=/data/train-images-idx3-ubyte.gz``.

``cpu`` holds the embedded default's values of the same keys, so ``--apply cpu`` returns to the default.

(Named ``profiles``, not ``profile``: Prefect runs ``pipeline/flow.py`` with ``pipeline/`` on ``sys.path``, where a
``profile.py`` would shadow the standard library's ``profile`` module, which torch imports through ``cProfile``.)
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from stages.common import PARAMS_FILE, ParamsError, apply_overrides, atomic_write_bytes, read_params_file

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def available() -> list[str]:
    return sorted(path.stem for path in PROFILES.glob("*.yaml"))


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= _leaves(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree}


def load_profile(name: str) -> dict[str, Any]:
    """The profile's leaves as ``{"stage_one.batch_size": 64, ...}``."""
    path = PROFILES / f"{name}.yaml"
    if not path.exists():
        raise ParamsError(f"no profile {name!r} ({path} does not exist); profiles: {', '.join(available())}")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: a profile is a mapping of params sections, got {type(tree).__name__}")
    return _leaves(tree)


def validate(params: dict, source: str) -> None:
    """Every section the stages read, checked by the stages' own validators (one ParamsError naming the key)."""
    from stages import prepare, train_stage_one, train_stage_two
    from stages.common import RuntimeParams, validate_section

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            validate_section(RuntimeParams, params.get("runtime", {}), "runtime", source)
            prepare.check_selection(validate_section(prepare.PrepareParams, params.get("prepare"), "prepare", source))
            train_stage_one.check_model_options(
                validate_section(train_stage_one.StageOneParams, params.get("stage_one"), "stage_one", source),
                source=source,
            )
            train_stage_two.load_params(path)
        except ParamsError as error:
            raise ParamsError(str(error).replace(str(path), source)) from None


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (values read as YAML) as leaves; a ParamsError for an item without ``=``."""
    leaves: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ParamsError(f"--set {item!r}: expected key=value, e.g. prepare.mnist_idx.images=/data/mnist.gz")
        leaves[key.strip()] = yaml.safe_load(value)
    return leaves


def profiled_params(
    name: str, params_file: str | Path = PARAMS_FILE, settings: dict[str, Any] | None = None
) -> tuple[dict, dict[str, Any]]:
    """(params.yaml with the profile and then ``settings`` applied, the leaves applied); validated."""
    leaves = load_profile(name) | dict(settings or {})
    params = apply_overrides(read_params_file(params_file), leaves)
    validate(params, f"{params_file} with profile {name!r}")
    return params, leaves


def apply_to_file(leaves: dict[str, Any], params_file: str | Path) -> None:
    """Write the leaves into ``params_file`` in place, keeping its comments and order (ruamel round trip)."""
    from ruamel.yaml import YAML

    round_trip = YAML()
    round_trip.preserve_quotes = True
    path = Path(params_file)
    document = round_trip.load(path.read_text())
    for dotted, value in leaves.items():
        *parents, leaf = dotted.split(".")
        node = document
        for part in parents:
            node = node[part]
        node[leaf] = value
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    atomic_write_bytes(path, buffer.getvalue().encode())


def dvc_command(leaves: dict[str, Any]) -> str:
    parts = ["dvc", "exp", "run"]
    for key, value in leaves.items():
        text = "null" if value is None else json.dumps(value) if not isinstance(value, str) else value
        parts += ["-S", f"{key}={text}"]
    return shlex.join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"the profile (profiles/<name>.yaml): {', '.join(available())}")
    parser.add_argument("--params", default=PARAMS_FILE)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the overrides as JSON (Prefect `-p overrides=`)")
    mode.add_argument("--apply", action="store_true", help="write the profile into the params file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a leaf on top of the profile (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        _, leaves = profiled_params(args.name, args.params, parse_settings(args.set))
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(leaves))
    elif args.apply:
        apply_to_file(leaves, args.params)
        print(f"{args.params}: profile {args.name!r} applied ({len(leaves)} keys); `dvc repro` runs it")
    else:
        print(dvc_command(leaves))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
