"""The residual add fused into the LayerNorm after it (probe.ops.add_layer_norm): its kernel against the float64
reference on odd shapes, outputs and every gradient, with the residual gradient ds absent and present and the
addend y in another dtype than the stream x; a packed call in one launch; and the model, whose blocks hand their
output adds on to the next norm, against the same model computed with every add and norm unfused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probe import ops
from probe.model import build_model
from probe.ops.layer_norm import add_layer_norm, add_layer_norm_ref

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5  # float32 outputs; gradients 4x (as tests/test_ops.py)
BF16 = 8e-3  # a gradient written in bf16: 8 bits of significand, cut short rather than rounded in the interpreter


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv("PROBE_OPS", "triton")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def inputs(shape, y_dtype, seed):
    """x, y [*shape], weight, bias [D] in float64, y's values those of y_dtype (so both sides add the same y)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.randn(*shape, generator=g, dtype=torch.float64).to(y_dtype).double()
    w, b = (torch.randn(shape[-1], generator=g, dtype=torch.float64) for _ in range(2))
    return x, y, w, b


SHAPES = [(1, 5), (63, 33), (200, 128), (2, 63, 5)]
Y_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("with_ds", [False, True], ids=["s_unused", "ds"])
@pytest.mark.parametrize("y_dtype", Y_DTYPES, ids=lambda d: "y_" + str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "R{}-D{}".format("x".join(map(str, s[:-1])), s[-1]))
def test_kernel_matches_the_float64_reference(shape, y_dtype, with_ds, kernel, poisoned):
    exact = [t.clone().requires_grad_() for t in inputs(shape, y_dtype, seed=sum(shape))]
    s_ref, h_ref = add_layer_norm_ref(*exact)
    cast = [t.to(DEVICE, y_dtype if i == 1 else torch.float32).requires_grad_() for i, t in enumerate(exact)]
    s, h = add_layer_norm(*cast)
    assert (s.dtype, h.dtype) == (torch.float32, torch.float32)  # x's dtype
    assert torch.isfinite(s).all() and torch.isfinite(h).all()
    assert rel(s.cpu(), s_ref) < TOL and rel(h.cpu(), h_ref) < TOL

    g = torch.Generator().manual_seed(1)
    dh, ds = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    outs, douts = ((s_ref, h_ref), (ds, dh)) if with_ds else ((h_ref,), (dh,))
    grads_ref = torch.autograd.grad(outs, exact, douts, retain_graph=True)
    outs, douts = ((s, h), (ds.float(), dh.float())) if with_ds else ((h,), (dh.float(),))
    grads = torch.autograd.grad(outs, cast, [d.to(DEVICE) for d in douts])
    for name, t, grad, grad_ref in zip("xywb", cast, grads, grads_ref):
        assert grad.dtype == t.dtype and grad.shape == t.shape and torch.isfinite(grad).all(), name
        assert rel(grad.cpu(), grad_ref) < (4 * TOL if grad.dtype == torch.float32 else BF16), name
    dx, dy = grads[:2]  # y's gradient is x's, rounded to y's dtype (under 1 ulp: Triton's interpreter truncates)
    assert (dy.float() - dx).abs().le(dx.abs() * 2**-7).all()
    if with_ds:  # the case tells a kernel that dropped ds from x's and y's gradients apart
        without_ds = torch.autograd.grad(h_ref, exact[:2], dh)
        assert all(rel(a, b) > 100 * TOL for a, b in zip(without_ds, grads_ref[:2]))


def test_tolerance_catches_a_gradient_off_by_a_thousandth():
    x, y, w, b = (t.requires_grad_() for t in inputs((63, 33), torch.float32, seed=0))
    _, h = add_layer_norm_ref(x, y, w, b)
    dy = torch.autograd.grad(h, y, torch.randn_like(h))[0]
    assert rel(dy * (1 + 1e-3), dy) > 4 * TOL


def test_out_dtype_and_autocast_choose_the_norms_dtype_as_layer_norm_does(kernel, poisoned):
    x, y, w, b = (t.float().to(DEVICE) for t in inputs((7, 16), torch.float32, seed=2))
    s, h = add_layer_norm(x, y.bfloat16(), w, b, out_dtype=torch.bfloat16)
    assert (s.dtype, h.dtype) == (torch.float32, torch.bfloat16)
    assert rel(h, ops.layer_norm(x + y.bfloat16(), w, b)) < 1e-2  # bf16 rounding of h
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        s, h = add_layer_norm(x, y.bfloat16(), w, b)
        assert s.dtype == h.dtype == ops.layer_norm(s, w, b).dtype == torch.float32


def test_misshapen_inputs_are_named():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="y must be"):
        add_layer_norm(x, torch.zeros(4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="weight and bias must be"):
        add_layer_norm(x, x, torch.zeros(5), torch.zeros(4))


def test_a_packed_call_is_each_members_own_call_in_one_launch(kernel, poisoned, monkeypatch):
    from probe.ops.layer_norm.kernel import _AddLayerNorm
    k, shape = 3, (2, 63, 33)
    members = [inputs(shape, torch.bfloat16, seed=10 + i) for i in range(k)]
    stacked = [torch.stack([m[j] for m in members]).to(DEVICE, torch.bfloat16 if j == 1 else torch.float32)
               .requires_grad_() for j in range(4)]
    launches = []
    original = _AddLayerNorm.forward
    monkeypatch.setattr(_AddLayerNorm, "forward", staticmethod(lambda *a: launches.append(1) or original(*a)))
    s, h = torch.func.vmap(add_layer_norm)(*stacked)
    assert len(launches) == 1, "one launch for the whole pack"
    g = torch.Generator().manual_seed(3)
    ds, dh = (torch.randn(k, *shape, generator=g).to(DEVICE) for _ in range(2))
    grads = torch.autograd.grad((s, h), stacked, (ds, dh))
    for i in range(k):
        own = [t[i].detach().clone().requires_grad_() for t in stacked]
        s_i, h_i = add_layer_norm(*own)
        assert rel(s[i], s_i) < 1e-6 and rel(h[i], h_i) < 1e-6
        for name, grad, grad_own in zip("xywb", grads, torch.autograd.grad((s_i, h_i), own, (ds[i], dh[i]))):
            assert grad.dtype == grad_own.dtype and rel(grad[i], grad_own) < 1e-5, f"member {i}, {name}"
    assert len(launches) == 1 + k


# -- the model: every block boundary fused --------------------------------------------------------------------
def unfused_hidden(model, tokens, positions):
    """What LanguageModel.hidden computed before the fusion: each add on its own, then each norm."""
    x = model.embed(tokens)
    for block in model.blocks:
        x = x + block.mixer(block.norm1(x))
        if block.mlp is not None:
            x = x + block.mlp(block.norm2(x))
    if model.decoder is not None:
        return model.norm(model.decoder(x[:, -1], positions))
    return model.norm(x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1])))


def loss_and_grads(model, hidden):
    logits = model.logits(hidden)
    loss = F.cross_entropy(logits.flatten(0, 1).double(), torch.arange(logits[..., 0].numel(), device=logits.device) % logits.shape[-1])
    return loss, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("arch, channel_mixer, decoder, dtype, ops_backend", [
    pytest.param("attention", "mlp", None, torch.float64, "ref", id="attention-mlp-f64"),
    # BaseConv convolves its input: its norm1 gives float32 under autocast
    pytest.param("baseconv,attention", "none", None, torch.float64, "ref", id="baseconv,attention-f64"),
    pytest.param("attention", "none", "compression", torch.float64, "ref", id="attention-compression-f64"),
    # the kernels (Triton's interpreter on a CPU)
    pytest.param("attention", "swiglu", None, torch.float32, "triton", id="attention-swiglu-f32-kernels"),
])
def test_fused_model_gives_the_unfused_loss_and_gradients(arch, channel_mixer, decoder, dtype, ops_backend,
                                                           monkeypatch):
    monkeypatch.setenv("PROBE_OPS", ops_backend)
    torch.manual_seed(0)
    model = build_model(arch, vocab_size=16, d_model=16, n_layers=2, max_seq_len=32, channel_mixer=channel_mixer,
                        decoder=decoder).to(DEVICE, dtype)
    tokens = torch.randint(0, 16, (2, 12), device=DEVICE)
    every = torch.arange(12, device=DEVICE).expand(2, -1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for positions in (torch.tensor([[11, 0, 5, 5], [3, 4, 1, 2]], device=DEVICE), None):  # scored ones; all
        loss, grads = loss_and_grads(model, model.hidden(tokens, positions))
        loss_ref, grads_ref = loss_and_grads(model, unfused_hidden(model, tokens, every if positions is None
                                                                   else positions))
        assert abs(loss.item() - loss_ref.item()) <= tol * abs(loss_ref.item())
        for (name, _), grad, grad_ref in zip(model.named_parameters(), grads, grads_ref):
            assert rel(grad, grad_ref) < tol or grad_ref.norm() == grad.norm() == 0, name


def test_a_block_called_alone_computes_its_unfused_output():
    torch.manual_seed(0)
    model = build_model("attention", vocab_size=16, d_model=16, n_layers=2, max_seq_len=32,
                        channel_mixer="mlp").double()
    block = model.blocks[0]
    x, pending = (torch.randn(2, 9, 16, dtype=torch.float64) for _ in range(2))
    expected = x + block.mixer(block.norm1(x))
    expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(block(x, pending), block(x + pending), rtol=1e-12, atol=1e-12)
    assert "blocks.0.norm1.weight" in model.state_dict() and "norm.bias" in model.state_dict()


@pytest.mark.parametrize("y_dtype", Y_DTYPES, ids=lambda d: "y_" + str(d).removeprefix("torch."))
def test_both_addends_gradients_come_straight_from_the_kernel(y_dtype, kernel, poisoned, monkeypatch):
    # no cast or add after the kernel: y's gradient is the kernel's second write (in y's dtype), or, in x's
    # dtype, the very tensor x's gradient is (as torch's add hands one gradient to both)
    from probe.ops.layer_norm import kernel as module
    written, launch = [], module._backward
    monkeypatch.setattr(module, "_backward", lambda *a: written.append(launch(*a)) or written[-1])
    x, y, w, b = (t.to(DEVICE, y_dtype if i == 1 else torch.float32).requires_grad_()
                  for i, t in enumerate(inputs((9, 16), y_dtype, seed=5)))
    s, h = add_layer_norm(x, y, w, b)
    dx, dy = torch.autograd.grad((s, h), (x, y), (torch.randn_like(s), torch.randn_like(h)))
    (dx_kernel, dy_kernel, _, _), = written
    assert dx.data_ptr() == dx_kernel.data_ptr()
    assert dy.data_ptr() == (dy_kernel if y_dtype != torch.float32 else dx_kernel).data_ptr()
