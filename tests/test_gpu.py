"""GPU paths (bf16 torch engine). CI has no GPU: these skip cleanly there; run them on a GPU box."""

import numpy as np
import pytest
import torch

from undercurve.scoring.torch_engine import TorchScorer
from undercurve.scoring.trajectory import build_trajectory

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SAMPLE = {"id": "g", "prompt": "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
          "response": "<think>3 + 4 = 7. So the answer is 7.</think> Tom has 7 apples. \\boxed{7}", "answer": "7"}


@pytest.mark.parametrize("mode", ["plain", "probe"])
def test_bf16_on_gpu_tracks_fp32_on_cpu(tiny_model, mode):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    traj = build_trajectory(SAMPLE, tok, 0)
    cpu = TorchScorer(tiny_model, device="cpu", dtype="float32").score([traj], mode=mode)[0]
    gpu = TorchScorer(tiny_model, device="auto", dtype="auto").score([traj], mode=mode)[0]
    assert np.allclose(gpu["entropy"], cpu["entropy"], atol=0.1)  # bf16 rounding, in bits
    assert abs(gpu["eas"] - cpu["eas"]) <= 0.02 * abs(cpu["eas"]) + 0.1
