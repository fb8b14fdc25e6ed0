"""The issue-7 benches on tiny sizes: the MIG-per-minute study (one attempt, MLflow run, table and plot) and the
training-speed bench (variants, data share, the FLOP count checked against a count from the layer shapes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from bench import mig_per_minute, train_speed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def bench_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(mig_per_minute, "WORK", tmp_path / "work")
    monkeypatch.setattr(mig_per_minute, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(mig_per_minute, "TABLE", tmp_path / "mig_study.md")
    monkeypatch.setattr(mig_per_minute, "PLOT", tmp_path / "mig_vs_minutes.png")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["n_images"] = 400
    params["runtime"]["precision"] = "fp32"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return tmp_path, path


def test_mig_per_minute_attempt_and_summary(bench_folders):
    import mlflow

    tmp_path, params = bench_folders
    for seed in (0, 1):
        mig_per_minute.main(
            [
                "--name",
                f"tiny-s{seed}",
                "--minutes",
                "0.06",
                "--eval-every",
                "0.02",
                "--threads",
                "1",
                "--log-every",
                "2",
                "--params",
                str(params),
                "--set",
                f"stage_one.seed={seed}",
                "--set",
                "stage_one.batch_size=16",
            ]
        )
    result = json.loads((tmp_path / "results" / "tiny-s0.json").read_text())
    rows = result["rows"]
    assert len(rows) >= 2 and rows[-1]["minutes"] >= 0.06 and rows[-1]["steps"] > rows[0]["steps"]
    for key in ("mig", "mig.no_shape", "mig.shape", "mig.posX", "active_units", "train.loss"):
        assert key in rows[-1], key
    assert 0.0 <= rows[-1]["mig"] <= 1.0
    assert result["config"]["stage_one"]["batch_size"] == 16 and result["config"]["threads"] == 1

    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["attempt"] == "tiny-s0"
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "mig")
    assert len(history) == len(rows)

    table = mig_per_minute.summarise()
    assert "| tiny | batch_size=16 | 32 | 2 | 1 |" in table  # the two seeds form one configuration, at 32 px
    assert (tmp_path / "mig_vs_minutes.png").stat().st_size > 1000

    with pytest.raises(SystemExit, match="2"):
        mig_per_minute.main(["--name", "bad", "--params", str(params), "--set", "stage_one.batch_size=-1"])


def test_score_at_a_common_minute_takes_the_last_score_by_then():
    rows = [{"minutes": m, "mig": mig} for m, mig in ((2.51, 0.1), (5.02, 0.2), (12.53, 0.3), (15.0, 0.4))]
    assert mig_per_minute._score_at(rows, 12.5) == 0.3  # a score lands a few seconds past its mark
    assert mig_per_minute._score_at(rows, 10.0) == 0.2
    assert math.isnan(mig_per_minute._score_at(rows, 1.0))


def forward_multiply_adds(model, x) -> tuple[int, int]:
    """Multiply-adds of one forward pass from the layer shapes (conv: output positions x Cout x Cin x k x k;
    transposed conv: input positions x Cin x Cout x k x k; linear: in x out), and those of the first layer."""
    counts: list[int] = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counts.append(output[0].numel() * module.in_channels * k)
        elif isinstance(module, torch.nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counts.append(inputs[0][0].numel() * module.out_channels * k)
        elif isinstance(module, torch.nn.Linear):
            counts.append(module.in_features * module.out_features)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model.decode(model.encode(x)[0])
    for handle in handles:
        handle.remove()
    return sum(counts), counts[0]


def test_train_speed_bench(bench_folders):
    from multistage.data.base import to_float
    from stages.common import read_params_file, validate_section
    from stages.prepare import PrepareParams
    from stages.train_stage_one import StageOneParams, build_model, load_data

    tmp_path, params = bench_folders
    out = tmp_path / "speed.json"
    report = train_speed.main(
        [
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup-rounds",
            "0",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--params",
            str(params),
            "--output",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert {"before", "channels_last", "channels_last+fused_adam", "peer", "pooled64"} <= set(report["variants"])
    assert report["peer_ratio_fp32"] > 0 and report["peer_ratio_fp32_fused_adam"] > 0
    assert report["peer_ratio_fp32_pooled64"] > 0
    # the pooled64 step: the conv32 networks on the pooled image, a quarter of the conv64 arithmetic or less
    assert report["variants"]["pooled64"]["flops_per_image"] < report["flops_per_image"] / 3
    for row in report["variants"].values():
        assert row["images_per_second"] > 0 and 0 <= row["data_share"] < 1 and row["fraction_of_matmul_peak"] > 0

    # the counter's figure = forward + backward from the layer shapes: backward = 2x forward (input and weight
    # gradients), less the input gradient of the first layer (the images need none)
    raw = read_params_file(params)
    prepare = validate_section(PrepareParams, raw["prepare"] | {"image_size": 64}, "prepare")  # the bench's default
    dataset = load_data(mig_per_minute.prepared_data(prepare))
    model = build_model(validate_section(StageOneParams, raw["stage_one"], "stage_one"), dataset, torch.device("cpu"))
    forward, first = forward_multiply_adds(model, to_float(dataset.images[:1]))
    expected = 2 * (3 * forward - first)
    assert abs(report["flops_per_image"] - expected) / expected < 0.01, (report["flops_per_image"], expected)
    assert 100e6 < report["flops_per_image"] < 115e6  # the conv 64x64 network on 3 x 64 x 64 images


def _logsumexp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_peer_btcvae_loss_and_sizes():
    """The ``peer`` variant's step (bench.peer_btcvae): its loss against the beta-TCVAE decomposition written out
    term by term in float64 with the peer's importance weights (and its way of applying them), and the Burgess et
    al. networks' sizes."""
    from bench.peer_btcvae import PeerBTCVAE

    batch, n_data, latent = 6, 1000, 10
    torch.manual_seed(0)
    model = PeerBTCVAE((1, 64, 64), dataset_size=n_data)
    x = torch.rand(batch, 1, 64, 64)
    torch.manual_seed(1)
    recon, mu, logvar, z = model(x)
    loss, terms = model.loss(x, recon, mu, logvar, z)
    torch.manual_seed(1)
    assert torch.equal(model.objective(x, 20_000)[0], loss)  # past the annealing: the same full objective

    # the peer's weights (its flat stride of B puts 1/N in column 0, the stratified weight in column 1 and at
    # row B - 2, column 0; 1/(B - 1) elsewhere)
    m = batch - 1
    stratified = (n_data - m) / (n_data * m)

    def weight(i: int, j: int) -> float:
        if j == 0:
            return stratified if i == batch - 2 else 1 / n_data
        return stratified if j == 1 else 1 / m

    def log_normal(v: float, mean: float, log_var: float) -> float:
        return -0.5 * (math.log(2 * math.pi) + log_var + (v - mean) ** 2 / math.exp(log_var))

    zs, mus, lvs = (t.detach().double().tolist() for t in (z, mu, logvar))
    mi = tc = dim_kl = 0.0
    for i in range(batch):
        log_q_given_x = sum(log_normal(zs[i][d], mus[i][d], lvs[i][d]) for d in range(latent))
        log_p = sum(log_normal(zs[i][d], 0.0, 0.0) for d in range(latent))
        # the peer adds the log-weight to each of the D dimensions before summing them: D log w_ij in log q(z)
        log_q = _logsumexp(
            [
                latent * math.log(weight(i, j)) + sum(log_normal(zs[i][d], mus[j][d], lvs[j][d]) for d in range(latent))
                for j in range(batch)
            ]
        )
        log_prod_q = sum(
            _logsumexp([math.log(weight(i, j)) + log_normal(zs[i][d], mus[j][d], lvs[j][d]) for j in range(batch)])
            for d in range(latent)
        )
        mi += (log_q_given_x - log_q) / batch
        tc += (log_q - log_prod_q) / batch
        dim_kl += (log_prod_q - log_p) / batch
    r, t = recon.detach().double(), x.double()
    bce = -(t * r.log() + (1 - t) * (1 - r).log()).sum().item() / batch
    for name, expected in (("mi", mi), ("tc", tc), ("dim_kl", dim_kl), ("reconstruction", bce)):
        assert terms[name].item() == pytest.approx(expected, rel=1e-5, abs=1e-5), name
    assert loss.item() == pytest.approx(bce + 1 * mi + 6 * tc + 1 * dim_kl, rel=1e-6)

    # sizes, by hand: a (transposed) convolution has c_in c_out 4 4 + c_out parameters, a linear layer in out + out
    def conv(c_in: int, c_out: int) -> int:
        return c_in * c_out * 16 + c_out

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    encoder = conv(1, 32) + 3 * conv(32, 32) + linear(32 * 4 * 4, 256) + linear(256, 256) + linear(256, 2 * latent)
    decoder = linear(latent, 256) + linear(256, 256) + linear(256, 32 * 4 * 4) + 3 * conv(32, 32) + conv(32, 1)
    assert (encoder, decoder) == (252_052, 249_953)
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    assert recon.shape == x.shape and 0 < recon.min() and recon.max() < 1
