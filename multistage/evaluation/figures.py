"""The evaluation's figures: reconstruction triplets, every variant side by side, latent traversals of Y, X-hat and
the residual z, and the KL per latent unit ranked (JointVAE figure 8)."""

from __future__ import annotations

from pathlib import Path

from multistage.viz import (
    discrete_traversal,
    latent_traversal,
    plot_bars,
    readable_scale,
    reconstruction_triplets,
    save_labelled_grid,
    save_rows,
    traversal_values,
)


def draw_figures(folder: Path, examples: dict, stage_one, stage_two: dict, device, count: int) -> list[dict[str, str]]:
    """Reconstruction triplets of the first (headline) variant, the reconstructions of every variant side by side,
    traversals of Y (stage-one decoder), of X-hat (G over the traversed condition, z fixed) and of the residual z
    with the condition fixed (conditioned headline variants), and the stage-one KL per latent unit ranked
    (JointVAE figure 8). Returns the captions list (``figures/captions.json``) in display order."""
    x, y = examples["x"][:count], examples["y"][:count]
    name, model = next(iter(stage_two.items()))
    own = examples["variants"][name]
    shown = "x_hat" if "x_hat" in own else "x_sample"
    what = "x-hat" if shown == "x_hat" else "a sample G(y, eps)"
    captions = []
    if x.ndim == 4:
        label = f"X-hat ({name})" if shown == "x_hat" else f"G(y, eps) ({name})"
        reconstruction_triplets(folder / "reconstructions.png", x, y, own[shown][:count], label)
        captions.append(
            {
                "file": "reconstructions.png",
                "caption": f"Reconstructions: x (top), y = stage one (middle), {what} = stage two ({name}, bottom)",
            }
        )
        rows, labels = [x, y], ["X", "Y (stage one)"]
        for variant, outputs in examples["variants"].items():
            key = "x_hat" if "x_hat" in outputs else "x_sample"
            rows.append(outputs[key][:count])
            labels.append(f"{variant}" + ("" if key == "x_hat" else " (sample)"))
        if len(rows) > 3:
            save_labelled_grid(folder / "comparison_reconstructions.png", rows, labels, scale=readable_scale(x))
            captions.append(
                {
                    "file": "comparison_reconstructions.png",
                    "caption": "Every variant on the same held-out images, one row each: "
                    + ", ".join(labels)
                    + " (X-hat; a variant without an encoder shows "
                    "a sample G(y, eps) instead)",
                }
            )
        values = traversal_values(2.5, 9)
        c0 = examples["c"][0].to(device)

        def decode_y(c):
            return stage_one.decode_mean(c)

        continuous = range(int(getattr(stage_one, "latent_dim", c0.shape[-1])))
        save_rows(folder / "traversal_y.png", [r.cpu() for r in latent_traversal(decode_y, c0, values, continuous)])
        captions.append(
            {
                "file": "traversal_y.png",
                "caption": "Traversal of the stage-one code C, decoded by stage one (Y): one row per "
                + ("continuous " if getattr(stage_one, "discrete_dims", ()) else "")
                + "latent",
            }
        )
        captions += _discrete_traversals(folder, stage_one, decode_y, c0, examples.get("kl_ranked"), values)
        if model.conditioning != "none" and "z" in own:
            z0 = own["z"][0].to(device)

            def condition(c):
                return decode_y(c) if model.conditioning == "y" else c

            def decode_x_hat(c):
                return model.generate(condition(c), z0.expand(len(c), -1))

            def decode_z(z):
                fixed = condition(c0.reshape(1, -1))
                return model.generate(fixed.expand(len(z), *([-1] * (fixed.ndim - 1))), z)

            symbol = "Y" if model.conditioning == "y" else "C"
            save_rows(folder / "traversal_x_hat.png", [r.cpu() for r in latent_traversal(decode_x_hat, c0, values)])
            save_rows(folder / "traversal_z.png", [r.cpu() for r in latent_traversal(decode_z, z0, values)])
            captions += [
                {
                    "file": "traversal_x_hat.png",
                    "caption": f"The same traversal rendered by stage two ({name}: X-hat = G({symbol}, z), z fixed)",
                },
                {
                    "file": "traversal_z.png",
                    "caption": f"Traversal of the residual z with {symbol} fixed ({name}: X-hat = G({symbol}, z))",
                },
            ]
    if "kl_ranked" in examples and x.ndim == 4:
        draw_ranked_traversal(
            folder / "traversal_ranked.png", stage_one.decode_mean, examples["c"][0].to(device), examples["kl_ranked"]
        )
        captions.append(
            {
                "file": "traversal_ranked.png",
                "caption": "Traversal of each continuous stage-one unit, ranked by its mean KL on the held-out images "
                "(JointVAE figure 8): units with a large KL change the image, units near 0 nats do not",
            }
        )
    if "kl_ranked" in examples:
        labels, values = zip(*examples["kl_ranked"])
        plot_bars(
            folder / "kl_per_unit.png",
            values,
            labels,
            "Stage-one KL per latent unit, ranked (held-out images)",
            "mean KL (nats)",
        )
        captions.append(
            {
                "file": "kl_per_unit.png",
                "caption": "KL divergence of each stage-one latent unit from the prior, averaged over the "
                "held-out images and ranked (JointVAE figure 8): the information each unit "
                "carries, in nats; units near 0 are unused",
            }
        )
    return captions


def _discrete_traversals(folder: Path, stage_one, decode, c0, kl_ranked, values) -> list[dict[str, str]]:
    """JointVAE figure 5, one figure per discrete code: a row per value of the code, the columns traversing the
    continuous unit with the largest KL (the most informative one), the other units at the first held-out image's
    code."""
    sizes = tuple(int(k) for k in getattr(stage_one, "discrete_dims", ()) or ())
    if not sizes:
        return []
    latent = int(stage_one.latent_dim)
    ranked = [name for name, _ in kl_ranked or () if name.startswith("z") and name[1:].isdigit()]
    unit = int(ranked[0][1:]) if ranked else 0
    captions, start = [], latent
    for i, size in enumerate(sizes):
        rows = [r.cpu() for r in discrete_traversal(decode, c0, (start, size), unit, values)]
        save_labelled_grid(
            folder / f"traversal_discrete_c{i}.png",
            rows,
            [f"c{i} = {k}" for k in range(size)],
            [f"{v:+.1f}" for v in values.tolist()],
            title=f"discrete code c{i} (rows) x continuous unit z{unit} (columns)",
        )
        captions.append(
            {
                "file": f"traversal_discrete_c{i}.png",
                "caption": f"Each value of the discrete code c{i} (one row each) with the most informative "
                f"continuous unit z{unit} traversed (JointVAE figure 5), decoded by stage one",
            }
        )
        start += size
    return captions


def draw_ranked_traversal(path: Path, decode, base_code, kl_ranked, values=None) -> Path:
    """JointVAE figure 8: one row per continuous unit, ordered by its mean KL (``kl_ranked``: (name ``z<j>``,
    nats) pairs, largest first), each row a traversal of that unit from ``base_code``, labelled with its KL."""
    values = traversal_values(2.5, 9) if values is None else values
    ranked = [(name, kl) for name, kl in kl_ranked if name.startswith("z") and name[1:].isdigit()]
    rows = [r.cpu() for r in latent_traversal(decode, base_code, values, [int(name[1:]) for name, _ in ranked])]
    return save_labelled_grid(
        path,
        rows,
        [f"{name}: {kl:.2f} nats" for name, kl in ranked],
        [f"{v:+.1f}" for v in values.tolist()],
        title="each continuous unit traversed, ranked by its KL (information it carries)",
    )
