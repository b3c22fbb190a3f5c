"""A detector compiled whole (``torch.compile(model)``, its criterion inside the forward, as
torchvision's detectors compute their losses) trains as it does eagerly: the ranking losses run
eagerly inside the compiled code, the assignment and the rest are traced."""

from __future__ import annotations

import warnings

import pytest
import torch

from detlosses.models import DetectorConfig, build_detector, build_model_criterion


def _batch(boxes_per_image: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        images.append(torch.rand(3, 128, 128, generator=g))
        size = (0.1 + 0.4 * torch.rand(boxes_per_image, 2, generator=g)) * 128
        corner = torch.rand(boxes_per_image, 2, generator=g) * (128 - size)
        targets.append({"boxes": torch.cat([corner, corner + size], 1),
                        "labels": torch.randint(0, 3, (boxes_per_image,), generator=g)})
    return images, targets


def _model(loss: str):
    torch.manual_seed(0)
    config = DetectorConfig(model="retinanet", backbone="mobilenet_v2", num_classes=3, image_size=128,
                            pretrained_backbone=False)
    return build_detector(config, build_model_criterion("retinanet", loss)).train()


@pytest.mark.parametrize("loss", ["ap"])
def test_compiled_retinanet_equals_eager(loss):
    torch._dynamo.reset()
    eager, compiled = _model(loss), _model(loss)
    run = torch.compile(compiled, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on its graph breaks
        for step in range(2):  # a different number of positives each step
            images, targets = _batch(2 + step, seed=step)
            want, got = eager(images, targets)["loss"], run(images, targets)["loss"]
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
            grads = [torch.autograd.grad(v, [p for p in m.parameters() if p.requires_grad])
                     for v, m in ((want, eager), (got, compiled))]
            for a, b in zip(*grads, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()
