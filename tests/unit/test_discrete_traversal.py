"""JointVAE figure 5 as the report draws it: one row per value of each discrete code, the most informative
continuous unit traversed along the row. A decoder that returns its code as a 1 x 1 image shows exactly which code
each cell decodes."""

from __future__ import annotations

import types

import torch

from multistage.evaluation.figures import _discrete_traversals
from multistage.viz import discrete_traversal, traversal_values


def code_as_image(codes: torch.Tensor) -> torch.Tensor:
    return codes[:, :, None, None].clone()


def test_each_row_sets_one_value_of_the_block_and_traverses_the_unit():
    base = torch.tensor([0.3, -0.7, 0.2, 0.5, 0.3, 0.9])  # two continuous units, a 3-valued block, one more unit
    values = torch.tensor([-1.0, 0.0, 2.0])
    rows = discrete_traversal(code_as_image, base, (2, 3), 1, values)
    assert len(rows) == 3
    for k, row in enumerate(rows):
        codes = row[:, :, 0, 0]
        assert torch.equal(codes[:, 2:5], torch.nn.functional.one_hot(torch.full((3,), k), 3).float())
        assert torch.equal(codes[:, 1], values)  # the traversed unit
        assert torch.equal(codes[:, 0], torch.full((3,), 0.3)) and torch.equal(codes[:, 5], torch.full((3,), 0.9))


def test_the_report_draws_one_labelled_figure_per_discrete_code_on_the_unit_with_the_largest_kl(tmp_path):
    stage_one = types.SimpleNamespace(latent_dim=2, discrete_dims=(3, 2))
    decoded = []

    def decode(codes):
        decoded.append(codes.clone())
        return codes.mean(dim=1)[:, None, None, None].expand(-1, 1, 8, 8).sigmoid()

    c0 = torch.zeros(7)
    kl_ranked = [("z1", 2.0), ("c0", 1.1), ("z0", 0.5)]
    captions = _discrete_traversals(tmp_path, stage_one, decode, c0, kl_ranked, traversal_values(2.5, 5))
    assert [c["file"] for c in captions] == ["traversal_discrete_c0.png", "traversal_discrete_c1.png"]
    assert all((tmp_path / c["file"]).stat().st_size > 1000 for c in captions)
    assert "z1" in captions[0]["caption"]  # the continuous unit with the largest KL, not the first one
    assert len(decoded) == 3 + 2  # a row per value of each code
    first, last = decoded[0], decoded[-1]
    assert torch.equal(first[:, 1], traversal_values(2.5, 5)) and torch.equal(first[:, 2:5].argmax(1), torch.zeros(5))
    assert torch.equal(last[:, 5:7].argmax(1), torch.ones(5, dtype=torch.long)) and last[:, 2:5].sum() == 0
