"""Training speed of the stage-one step: images/s of each variant, the data share, and the arithmetic limit.

The step is the embedded default's beta-TCVAE step (stratified estimator, batch 64) on the prepared data of
params.yaml's ``prepare`` section, as the training loop does it: batch read from the memory-mapped images,
conversion, objective, backward, Adam. Variants, interleaved round by round in one process (medians over
rounds): ``before`` (contiguous NCHW), ``channels_last`` (what the stage does on CPU), ``channels_last+compile``
(with ``--compile``) and ``channels_last+bf16`` (bf16 autocast, where the device has it natively). Also
reported: the data share of a step, the FLOPs per image (``torch.utils.flop_counter``) and the fraction of the
machine's measured matmul throughput. On a CUDA device the figures are the GPU's.

Side by side, the variant ``peer``: the beta-TCVAE step of YannDubs/disentangling-vae (Burgess et al. networks,
stratified estimator, beta = 6, Adam 5e-4, contiguous NCHW float32), rebuilt for timing in ``bench.peer_btcvae``,
fed the same batches of the same images through the same loop, interleaved with the others. ``peer_ratio_fp32`` is
``channels_last`` / ``peer`` in images/s (the project's fp32 step against the peer's), ``peer_ratio_bf16``
``channels_last+bf16`` / ``peer`` where bf16 was measured (else null).

Two more levers, also against the peer: ``channels_last+fused_adam`` (Adam's fused kernel, ``fused=True``;
``peer_ratio_fp32_fused_adam``) and, at 64 px, ``pooled64`` (``stage_one.architecture: pooled64``, the conv32
networks on the 2x2-pooled image with 2x-upsampled logits, a different network with a quarter of the arithmetic;
``peer_ratio_fp32_pooled64``). Each variant's FLOPs per image are in its row.

    .venv/bin/python -m bench.train_speed [--threads 2] [--batch-size 64] [--rounds 6] [--steps 8] [--compile]

Writes ``bench/results/train_speed.json``. Results: docs/studies/training-speed.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
OUTPUT = PROJECT / "bench" / "results" / "train_speed.json"


def build(variant: str, stage_one, dataset, device):
    import torch

    from multistage.nn.precision import train_networks_in_bf16
    from stages.train_stage_one import build_model

    torch.manual_seed(0)
    if variant == "peer":
        from bench.peer_btcvae import build_peer

        return build_peer(dataset.images.shape[1:], len(dataset.train_indices), device)
    if variant == "pooled64":
        stage_one = stage_one.model_copy(update={"architecture": "pooled64"})
    model = build_model(stage_one, dataset, device)
    if variant == "before":
        model = model.to(memory_format=torch.contiguous_format)
    if variant.endswith("+bf16"):
        train_networks_in_bf16(device, model.encoder, model.decoder)
    if variant.endswith("+compile"):
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
    fused = {"fused": True} if variant.endswith("+fused_adam") else {}
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=stage_one.learning_rate, **fused)
    return model, optimizer


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(model, optimizer, dataset, batch_size: int, steps: int, start: int, device) -> tuple[float, float]:
    """``steps`` training steps from ``start``; returns (seconds in all, seconds reading and converting data)."""
    from multistage.data.base import to_float
    from multistage.train import batch_indices

    train_indices, images = dataset.train_indices, dataset.images
    data_seconds = 0.0
    synchronise(device)
    began = time.perf_counter()
    for step in range(start, start + steps):
        t0 = time.perf_counter()
        indices = batch_indices(len(train_indices), batch_size, 0, step)
        x = to_float(images[np.sort(train_indices[indices])]).to(device, non_blocking=True)
        data_seconds += time.perf_counter() - t0
        loss, _ = model.objective(x, step + 10_000)  # past the warm-up: the full objective
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronise(device)
    return time.perf_counter() - began, data_seconds


def step_flops(model, dataset, batch_size: int, device) -> float:
    """FLOPs of one training step's forward and backward, per image (FlopCounterMode; multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    from multistage.data.base import to_float

    x = to_float(dataset.images[np.sort(dataset.train_indices[:batch_size])]).to(device)
    with FlopCounterMode(display=False) as counter:
        loss, _ = model.objective(x, 10_000)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def matmul_throughput(device, dtype=None, size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a dense ``size`` x ``size`` matrix product in ``dtype`` (float32 by default) with the current
    threads: the practical arithmetic ceiling of this machine for this process in that precision."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        a @ b
    synchronise(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronise(device)
    return 2 * size**3 * repeats / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from bench.mig_per_minute import prepared_data
    from multistage.nn.precision import bf16_is_native
    from multistage.train import select_device
    from stages.common import read_params_file, validate_section
    from stages.prepare import PrepareParams
    from stages.train_stage_one import StageOneParams, check_model_options, load_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="steps per variant per round")
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of encoder and decoder")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--image-size",
        type=int,
        choices=(32, 64),
        default=64,
        help="prepare.image_size of the measured step: 64, the reference conv 64x64 step "
        "(the default); 32, the CPU default's conv32 step",
    )
    parser.add_argument("--params", default=str(PROJECT / "params.yaml"))
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = select_device(args.device)
    params = read_params_file(args.params)
    prepare = validate_section(PrepareParams, params.get("prepare"), "prepare", args.params)
    prepare = prepare.model_copy(update={"image_size": args.image_size})
    stage_one = validate_section(StageOneParams, params.get("stage_one"), "stage_one", args.params)
    stage_one = stage_one.model_copy(update={"batch_size": args.batch_size})
    check_model_options(stage_one, source=args.params)
    dataset = load_data(prepared_data(prepare))
    # the pages of the images are read once beforehand, as they are after the first epoch of a real run
    np.asarray(dataset.images[: len(dataset.images)]).sum()

    variants = ["before", "channels_last", "channels_last+fused_adam"]
    variants += ["channels_last+compile"] if args.compile else []
    if bf16_is_native(device):
        variants.append("channels_last+bf16")
    if device.type == "cuda":
        variants = [v for v in variants if v != "before"] + ["before"]
    variants += ["peer"] + (["pooled64"] if args.image_size == 64 else [])
    built = {variant: build(variant, stage_one, dataset, device) for variant in variants}
    flops = step_flops(built["before"][0], dataset, args.batch_size, device)
    peer_flops = step_flops(built["peer"][0], dataset, args.batch_size, device)
    variant_flops = {v: peer_flops if v == "peer" else flops for v in variants}
    if "pooled64" in built:
        variant_flops["pooled64"] = step_flops(built["pooled64"][0], dataset, args.batch_size, device)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    data_share: dict[str, list[float]] = {v: [] for v in variants}
    step = 0
    for round_index in range(args.warmup_rounds + args.rounds):
        for variant in variants:
            model, optimizer = built[variant]
            seconds, data_seconds = run_steps(model, optimizer, dataset, args.batch_size, args.steps, step, device)
            step += args.steps
            if round_index >= args.warmup_rounds:
                samples[variant].append(args.steps * args.batch_size / seconds)
                data_share[variant].append(data_seconds / seconds)
        print(
            f"round {round_index + 1}/{args.warmup_rounds + args.rounds}: "
            + ", ".join(f"{v} {samples[v][-1]:.0f} img/s" for v in variants if samples[v]),
            flush=True,
        )
    peak = matmul_throughput(device)
    peak_bf16 = matmul_throughput(device, torch.bfloat16) if bf16_is_native(device) else None

    report = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "input_shape": list(dataset.images.shape[1:]),
        "model": stage_one.model,
        "estimator": stage_one.betatcvae.estimator,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "flops_per_image": flops,
        "peer_flops_per_image": peer_flops,
        "matmul_flops_per_second": peak,
        "matmul_bf16_flops_per_second": peak_bf16,
        "variants": {},
    }
    base = statistics.median(samples["before"])
    for variant in variants:
        images_per_second = statistics.median(samples[variant])
        report["variants"][variant] = {
            "images_per_second": images_per_second,
            "images_per_second_range": [min(samples[variant]), max(samples[variant])],
            "ratio_to_before": images_per_second / base,
            "data_share": statistics.median(data_share[variant]),
            # against the peak of the precision the convolutions ran in
            "flops_per_image": variant_flops[variant],
            "fraction_of_matmul_peak": images_per_second
            * variant_flops[variant]
            / (peak_bf16 if variant.endswith("+bf16") else peak),
        }
    peer = report["variants"]["peer"]["images_per_second"]
    report["peer_ratio_fp32"] = report["variants"]["channels_last"]["images_per_second"] / peer
    fused = report["variants"]["channels_last+fused_adam"]["images_per_second"]
    report["peer_ratio_fp32_fused_adam"] = fused / peer
    pooled = report["variants"].get("pooled64")
    report["peer_ratio_fp32_pooled64"] = pooled["images_per_second"] / peer if pooled else None
    bf16 = report["variants"].get("channels_last+bf16")
    report["peer_ratio_bf16"] = bf16["images_per_second"] / peer if bf16 else None
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{report['device']}, {report['threads']} threads, batch {args.batch_size}, input "
        f"{tuple(report['input_shape'])}: {flops / 1e6:.1f} MFLOP per image per step (forward + backward), "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s" + (f" (bf16: {peak_bf16 / 1e9:.1f})" if peak_bf16 else "")
    )
    for variant, row in report["variants"].items():
        print(
            f"  {variant:24s} {row['images_per_second']:7.0f} img/s (x{row['ratio_to_before']:.2f}), data "
            f"{100 * row['data_share']:.1f}% of the step, {100 * row['fraction_of_matmul_peak']:.1f}% of the "
            "matmul peak"
        )
    print(
        f"  the project's step against the peer's: x{report['peer_ratio_fp32']:.2f} fp32"
        + (f", x{report['peer_ratio_bf16']:.2f} bf16" if report["peer_ratio_bf16"] is not None else "")
        + f", x{report['peer_ratio_fp32_fused_adam']:.2f} with fused Adam"
        + (f", x{report['peer_ratio_fp32_pooled64']:.2f} pooled64" if report["peer_ratio_fp32_pooled64"] else "")
        + f" (peer: {peer_flops / 1e6:.1f} MFLOP per image per step)"
    )
    return report


if __name__ == "__main__":
    main()
