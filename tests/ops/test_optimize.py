"""The guided step / refinement loop with synthetic objectives."""

import pytest
import torch

from storm_ops.guidance.optimize import Evaluation, apply_update, guidance_step


class MeanObjective:
    """loss_b = max(0, 1 - mean(z_b)) with a surrogate gradient of -1 per element (so an update with
    multiplier m raises every entry by m); satisfied when mean(z_b) >= T."""

    def __init__(self, threshold=0.5, cap=20, poison=None):
        self.threshold, self.cap, self.calls, self.poison = threshold, cap, 0, poison

    def __call__(self, z):
        self.calls += 1
        mean = z.flatten(1).mean(1)
        loss = (1 - mean).clamp_min(0)
        grad = torch.where((loss > 0)[:, None, None], torch.full_like(z, -1.0), torch.zeros_like(z))
        if self.poison is not None:
            grad[self.poison] = float("nan")
        return Evaluation(loss, grad, loss <= 1 - self.threshold, self.cap)


def test_refinement_stops_at_its_threshold():
    z = torch.zeros(1, 2, 2)
    obj = MeanObjective(threshold=0.5, cap=20)
    out, report = guidance_step(z, obj, multiplier=0.1)
    # each update raises the mean by 0.1: 5 updates reach the threshold, then it stops; the regular update follows
    assert report.refine_iters == 5 and obj.calls == 6 and report.updates == 6
    assert out.mean().item() == pytest.approx(0.5 + 0.1)
    assert bool(report.last.satisfied.all())
    assert torch.equal(z, torch.zeros(1, 2, 2))  # input untouched


def test_refinement_stops_at_its_iteration_cap():
    obj = MeanObjective(threshold=0.9, cap=3)
    out, report = guidance_step(torch.zeros(1, 2, 2), obj, multiplier=0.1)
    assert report.refine_iters == 3 and obj.calls == 4 and report.updates == 4
    assert not bool(report.last.satisfied.all())
    assert out.mean().item() == pytest.approx(0.3 + 0.1)  # the cap's three, then the regular update


def test_regular_update_uses_the_last_evaluation_and_refinement_is_per_sample():
    z = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 0.45)])
    obj = MeanObjective(threshold=0.5, cap=20)
    out, report = guidance_step(z, obj, multiplier=0.1)
    # sample 1 needs one refinement update, sample 0 five; both get the regular update afterwards
    assert report.refine_iters == 5
    assert report.sample_refine_iters.tolist() == [5, 1]
    assert out[0].mean().item() == pytest.approx(0.6)
    assert out[1].mean().item() == pytest.approx(0.65)


def test_no_refinement_when_its_cap_is_zero():
    obj = MeanObjective(threshold=0.5, cap=0)
    out, report = guidance_step(torch.zeros(1, 2, 2), obj, multiplier=0.1)
    assert report.refine_iters == 0 and obj.calls == 1
    assert out.mean().item() == pytest.approx(0.1)


def test_non_finite_gradient_skips_that_sample_and_is_reported():
    z = torch.zeros(2, 2, 2)
    obj = MeanObjective(threshold=0.5, cap=0, poison=1)
    out, report = guidance_step(z, obj, multiplier=0.1)
    assert torch.equal(out[1], z[1])  # never corrupted
    assert out[0].mean().item() == pytest.approx(0.1)
    assert report.skipped and "sample(s) [1]" in report.skipped[0]
    assert torch.isfinite(out).all()


def test_non_finite_loss_is_skipped_and_refinement_gives_up_when_nothing_can_move():
    def evaluate(z):
        return Evaluation(torch.tensor([float("nan")]), torch.ones_like(z), torch.tensor([False]), 20)

    calls = []
    out, report = guidance_step(torch.zeros(1, 3), lambda z: calls.append(1) or evaluate(z), multiplier=1.0)
    assert torch.equal(out, torch.zeros(1, 3))
    assert len(calls) == 1 and report.updates == 0
    assert any("non-finite loss" in s for s in report.skipped)


def test_apply_update_with_per_sample_multiplier():
    z = torch.zeros(2, 3)
    ev = Evaluation(torch.zeros(2), torch.ones(2, 3), torch.ones(2, dtype=torch.bool))
    out, applied = apply_update(z, ev, torch.tensor([1.0, 2.0]))
    assert torch.equal(out, torch.tensor([[-1.0] * 3, [-2.0] * 3])) and bool(applied.all())


def test_clip_grad_norm_bounds_each_sample_and_never_scales_up():
    from storm_ops.guidance.optimize import clip_grad_norm

    grad = torch.stack([torch.full((2, 2), 3.0), torch.full((2, 2), 0.1), torch.full((2, 2), float("nan"))])
    out = clip_grad_norm(grad, 1.0)
    assert out[0].norm().item() == pytest.approx(1.0)
    assert torch.equal(out[1], grad[1])
    assert torch.isnan(out[2]).all()  # left for the update logic to skip
    per_sample = clip_grad_norm(grad[:2], torch.tensor([0.5, 0.01]))
    assert per_sample[0].norm().item() == pytest.approx(0.5) and per_sample[1].norm().item() == pytest.approx(0.01)


def test_x_space_update_equals_the_z_space_update():
    """z = x / sqrt(1 + s^2): z <- z - a grad_z L  is  x <- x - a (1 + s^2) grad_x L.

    ComfyUI samples ``x = x0 + sigma * eps`` while the papers' step sizes are for the diffusers latent ``z``.
    """
    sigma, alpha = 3.0, 0.7
    scale = (1 + sigma ** 2) ** 0.5
    x = torch.randn(5, dtype=torch.float64)

    def loss_of_z(z):
        return (z.sin() * torch.arange(5.0, dtype=torch.float64)).sum()

    xg = x.clone().requires_grad_(True)
    grad_x = torch.autograd.grad(loss_of_z(xg / scale), xg)[0]
    zg = (x / scale).requires_grad_(True)
    grad_z = torch.autograd.grad(loss_of_z(zg), zg)[0]
    x_new = x - alpha * (1 + sigma ** 2) * grad_x
    z_new = x / scale - alpha * grad_z
    assert torch.allclose(x_new / scale, z_new, atol=1e-12)
