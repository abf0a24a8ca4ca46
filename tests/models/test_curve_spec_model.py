"""The declared curve posterior: spec ⇄ dict, the Pyro model's sites and densities."""
from __future__ import annotations

import pyro
import pytest
import torch

from bayes_lora.lora import BezierCurve, FullSpace
from bayes_lora.models import (
    CurveModel,
    CurvePosteriorSpec,
    OffsetSpec,
    Prior,
    TaskLogits,
)
from bayes_lora.models.curve import offset_basis


def test_declared_and_dict_forms_are_the_same_spec():
    declared = CurvePosteriorSpec(
        t_prior=Prior("beta", (2, 3)),
        offset=OffsetSpec(dim=2, scale=0.05, basis="random", seed=4),
        temperature=2.5,
        subsample_size=16,
    )
    table = {
        "t_prior": {"beta": [2, 3]},
        "offset": {"dim": 2, "scale": 0.05, "basis": "random", "seed": 4},
        "temperature": 2.5,
        "subsample_size": 16,
    }
    assert CurvePosteriorSpec.from_dict(table) == declared
    assert CurvePosteriorSpec.from_dict(declared.to_dict()) == declared


@pytest.mark.parametrize(
    "table,match",
    [
        ({"temprature": 2.0}, "unknown key.*temprature"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"t_prior": {"gamma": [1, 1]}}, "prior on t must be one of"),
        ({"t_prior": {"beta": [1]}}, "takes 2 parameters"),
        ({"offset": {"dim": -1}}, "offset dim"),
        ({"offset": {"dims": 2}}, "unknown key.*dims"),
        ({"curve": {"degree": 3}}, r"set them in \[curve\]"),
    ],
)
def test_bad_spec_is_a_clear_error(table, match):
    with pytest.raises(ValueError, match=match):
        CurvePosteriorSpec.from_dict(table)


def _model(spec, ctx):
    curve = BezierCurve(ctx.anchors, degree=2, init_noise=0.01, seed=0)
    return CurveModel(spec, curve, FullSpace(ctx.fm.layout), TaskLogits(ctx.fm, ctx.train))


def test_model_sites_and_log_density(tiny_ctx):
    ctx, _ = tiny_ctx
    spec = CurvePosteriorSpec(t_prior=Prior("beta", (2, 2)), offset=OffsetSpec(dim=3, scale=0.1), temperature=2.0)
    model = _model(spec, ctx)
    t, z = torch.tensor(0.3), torch.tensor([0.05, -0.02, 0.01])
    cond = pyro.poutine.condition(model, data={"t": t, "z": z})
    tr = pyro.poutine.trace(cond).get_trace()
    sites = {n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"}
    assert sites == {"t", "z", "obs"}
    assert not any(isinstance(m, pyro.nn.PyroModule) for m in ctx.fm.model.modules()), "the transformer stays plain"
    tr.compute_log_prob()
    logits = model.likelihood.logits(model.theta(t, z))
    expected = torch.distributions.Categorical(logits=logits).log_prob(ctx.train.labels).sum() / 2.0
    torch.testing.assert_close(tr.nodes["obs"]["log_prob_sum"], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tr.nodes["t"]["log_prob_sum"], torch.distributions.Beta(2.0, 2.0).log_prob(t))
    # θ is the curve point plus the offset in its orthonormal basis
    P = model.basis
    torch.testing.assert_close(P.T @ P, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.theta(t, z), model.theta(t) + P @ z, atol=1e-6, rtol=0)


def test_subsampled_plate_scales_the_likelihood(tiny_ctx):
    ctx, _ = tiny_ctx
    spec = CurvePosteriorSpec(subsample_size=8)
    model = _model(spec, ctx)
    tr = pyro.poutine.trace(pyro.poutine.condition(model, data={"t": torch.tensor(0.5)})).get_trace()
    assert tr.nodes["obs"]["value"].shape == (8,)
    assert tr.nodes["obs"]["scale"] == pytest.approx(len(ctx.train) / 8)


def test_offset_basis_from_control_points_spans_their_differences(tiny_ctx):
    ctx, _ = tiny_ctx
    curve = BezierCurve(ctx.anchors, degree=2, init_noise=0.1, seed=1)
    P = offset_basis(curve, CurvePosteriorSpec(offset=OffsetSpec(dim=2)))
    cp = curve.control_points().detach()
    diffs = (cp[1:] - cp[:1]).T
    torch.testing.assert_close(P @ (P.T @ diffs), diffs, atol=1e-4, rtol=1e-4)
