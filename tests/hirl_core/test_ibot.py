"""iBOT: masked-patch distillation averaged over masked tokens only, patch centering, shared head."""
import numpy as np
import torch

from hirl_core.methods.ibot import masked_patch_loss, updated_patch_center

from ._tiny import loss_drops_after_one_step, tiny_masks, tiny_method, tiny_views


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_patch_loss_matches_independent_formula_over_masked_tokens_only():
    rng = np.random.default_rng(0)
    s = [rng.normal(size=(3, 5, 6)) for _ in range(2)]
    t = [rng.normal(size=(3, 5, 6)) for _ in range(2)]
    m = [rng.random(size=(3, 5)) < 0.5 for _ in range(2)]
    m[0][1] = False  # an image without masked patches
    m[1][2, 0] = True
    center, st, tt = rng.normal(size=(1, 1, 6)) * 0.1, 0.1, 0.05
    total = 0.0
    for sv, tv, mv in zip(s, t, m):
        per_image = []
        for i in range(3):
            terms = [-(_np_softmax((tv[i, j] - center[0, 0]) / tt) * np.log(_np_softmax(sv[i, j] / st))).sum()
                     for j in range(5) if mv[i, j]]
            per_image.append(sum(terms) / max(1, len(terms)))
        total += np.mean(per_image)
    args = ([torch.tensor(x) for x in t], [torch.tensor(x) for x in m], torch.tensor(center), st, tt)
    got = masked_patch_loss([torch.tensor(x) for x in s], *args)
    assert abs(got.item() - total / 2) < 1e-5
    s_changed = [x.copy() for x in s]
    s_changed[0][~m[0]] += 5.0  # unmasked student patches do not matter
    assert abs(masked_patch_loss([torch.tensor(x) for x in s_changed], *args).item() - got.item()) < 1e-9


def test_patch_center_is_an_ema_over_tokens_and_images():
    t = torch.arange(12.0).view(2, 3, 2)  # per-image token means: [2, 3], [8, 9] -> batch mean [5, 6]
    assert torch.allclose(updated_patch_center(torch.zeros(1, 1, 2), t, 0.5), torch.tensor([[[2.5, 3.0]]]))


def test_forward_uses_masks_and_shared_head():
    model = tiny_method("ibot")
    views, masks = tiny_views("ibot", 4), tiny_masks(4)
    assert model.student.mask_token is not None and model._heads()[0] is model.student_head
    out = model(views, masks=masks)
    ratio = torch.cat(masks).float().mean().item()
    assert abs(out.logs["mask_ratio"] - ratio) < 1e-6
    assert abs(out.loss.item() - (out.logs["loss_cls"] + out.logs["loss_patch"])) < 1e-5
    assert torch.count_nonzero(model.center2) > 0  # the patch center moved
    out.loss.backward()
    assert model.student.mask_token.grad is not None and model.student.mask_token.grad.abs().sum() > 0
    no_mask = model(views, masks=[torch.zeros_like(m) for m in masks])
    assert no_mask.logs["loss_patch"] == 0.0  # nothing masked: no patch term
    model.on_step_start(0, 10, 5)
    assert model.make_masks(3, (4, 4)).shape == (3, 4, 4)


def test_one_step_lowers_the_loss():
    before, after = loss_drops_after_one_step("ibot")
    assert after < before
