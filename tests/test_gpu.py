"""CUDA-only checks (skipped without a GPU): the same examples on both devices, every mixer under bf16 autocast
against its fp32 self, and training in bf16-mixed."""
import pytest
import torch

from probe.mixers import MIXERS
from probe.train import ModelConfig, TrainConfig, train
from tasks import TASKS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_seed_same_examples_on_cpu_and_gpu(task):
    cfg = TASKS[task](seq_len=128)
    a, b = cfg.generate(512, seed=3, device="cpu"), cfg.generate(512, seed=3, device="cuda")
    assert torch.equal(a.inputs, b.inputs.cpu()) and torch.equal(a.targets, b.targets.cpu())
    for k in a.slices:
        assert torch.equal(a.slices[k], b.slices[k].cpu())


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_mixer_under_bf16_autocast_tracks_fp32(name):
    torch.manual_seed(0)
    mixer = MIXERS[name].build(64, max_seq_len=256).cuda()
    x = torch.randn(4, 200, 64, device="cuda", requires_grad=True)
    ref = mixer(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = mixer(x)
    (g,) = torch.autograd.grad(out.float().square().sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(out, ref) < 5e-2, f"forward rel err {rel(out, ref):.3g}"
    # gradients through 200 steps of data-dependent decay (gla, mamba) amplify bf16 rounding: 0.109 seen for
    # the scalar-decay form (now gla_scalar)
    assert rel(g, g_ref) < 1.5e-1, f"grad rel err {rel(g, g_ref):.3g}"


def test_attention_learns_mqar_in_bf16_on_gpu():
    task = TASKS["mqar"](seq_len=64, vocab_size=256, num_kv_pairs=8, eval_seq_lens=(128,))
    r = train(task, "attention", ModelConfig(d_model=64),
              TrainConfig(lr=3e-3, batch_size=128, max_steps=1500, num_train=20_000, num_test=1000, val_every=100,
                          stop_at=0.95, device="cuda"))
    assert r["accuracy"] >= 0.9 and r["device"] != "cpu"
