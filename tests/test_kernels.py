"""probe's Triton kernels against their plain PyTorch references, forward and backward, on odd shapes, with every
output buffer poisoned by NaN first. On a CPU they run through Triton's interpreter (conftest.py), in float32 at
short lengths; on a GPU the same tests run the compiled kernels, in float32 and bf16."""
import pytest
import torch

from probe.ops import selective_scan_ref
from test_ops import _selective_scan_case

kernels = pytest.importorskip("probe.ops.selective_scan.kernel")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def scan_inputs(rows, length, d, n, seed):
    """The op tests' selective-scan inputs (tests/test_ops.py), and an output gradient."""
    inputs, _, _ = _selective_scan_case((rows, length, d, n), seed)
    dy = torch.randn(rows, length, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return tuple(inputs), dy


def reference(u, delta, A, B, C, D):
    return selective_scan_ref(u, delta, A, B, C, D)


def rel(a, b):
    """‖a − b‖ / ‖b‖, and 0 where both are exactly zero (dA at L = 1: no earlier state to decay)."""
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


# channel counts that leave a partial last block of channels (block_d picks 4 at these sizes)
# lengths inside one checkpoint chunk (32 steps), across a partial last chunk, and a whole number of chunks
@pytest.mark.parametrize("rows, length, d, n", [(2, 1, 10, 5), (2, 63, 10, 5), (1, 1000, 6, 16), (3, 17, 20, 4),
                                                (2, 64, 6, 4)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("skip", [True, False], ids=["D", "noD"])
def test_selective_scan_matches_the_reference(rows, length, d, n, dtype, tol, skip, poisoned):
    if DEVICE == "cpu" and (dtype == torch.bfloat16 or length == 1000):
        # bf16 is tested compiled, on the GPU; the interpreter spends ~80 s at L = 1000, whose fp32 case with D
        # tests/test_ops.py runs at the same shape
        pytest.skip("the interpreter runs fp32 at short lengths here (bf16 and L = 1000 run on the GPU)")
    check_scan(rows, length, d, n, dtype, tol, skip)


def check_scan(rows, length, d, n, dtype, tol, skip):
    (u, delta, A, B, C, D), dy = scan_inputs(rows, length, d, n, seed=length + d)
    D = D if skip else None
    exact = [x.requires_grad_() for x in (u, delta, A, B, C) + ((D,) if skip else ())]
    y_ref = reference(u, delta, A, B, C, D)
    grads_ref = torch.autograd.grad(y_ref, exact, dy)

    # the model feeds activations in its compute dtype and keeps A and D as float32 parameters
    cast = [x.detach().to(DEVICE, dtype if i in (0, 1, 3, 4) else torch.float32).requires_grad_()
            for i, x in enumerate((u, delta, A, B, C) + ((D,) if skip else ()))]
    y = kernels.selective_scan_kernel(*cast[:5], cast[5] if skip else None)
    assert y.dtype == dtype and y.shape == (rows, length, d)
    assert torch.isfinite(y).all(), "an output element was never written"
    # the reference on the same rounded inputs isolates the kernel's own error from the inputs' rounding
    y_same_inputs = reference(*[x.detach().double().cpu() for x in cast[:5]],
                              cast[5].detach().double().cpu() if skip else None)
    assert rel(y.float().cpu(), y_same_inputs) < tol
    grads = torch.autograd.grad(y, cast, dy.to(DEVICE, dtype))
    for name, g, g_ref, x in zip("u delta A B C D".split(), grads, grads_ref, cast):
        assert g.dtype == x.dtype and g.shape == x.shape, name
        assert torch.isfinite(g).all(), f"d{name}: an element was never written"
        # gradients against the float64 reference: bf16 inputs move them by their own rounding too
        assert rel(g.float().cpu(), g_ref) < (tol if dtype == torch.float32 else 5e-2), name


def test_selective_scan_with_wide_channel_blocks(monkeypatch, poisoned):
    # big batches take 16 channels per program; force that at a size the interpreter can afford
    monkeypatch.setattr(kernels, "block_d", lambda rows, d: 16)
    check_scan(2, 40, 20, 5, torch.float32, 1e-5, skip=True)


def test_selective_scan_reads_strided_inputs_in_place(poisoned):
    # Mamba's B and C are column slices of x_proj's output (any strides, read in place); u, delta and dy may come
    # with row and position strides of their own (channels contiguous)
    (u, delta, A, B, C, D), dy = scan_inputs(2, 11, 6, 4, seed=9)
    wide = lambda x, width: torch.cat([x, torch.randn(*x.shape[:-1], width)], -1)[..., :x.shape[-1]]
    proj = torch.cat([torch.randn(2, 11, 3), B, C], -1).float().requires_grad_()  # [dt_rank | B | C]
    u_s, delta_s = (wide(x.float(), 5).detach().requires_grad_() for x in (u, delta))
    y = kernels.selective_scan_kernel(u_s, delta_s, A.float().requires_grad_(), proj[..., 3:7], proj[..., 7:],
                                      D.float())
    exact = [x.clone().requires_grad_() for x in (u, delta, B, C)]
    y_ref = reference(exact[0], exact[1], A, exact[2], exact[3], D)
    assert rel(y.cpu(), y_ref) < 1e-5
    grads = torch.autograd.grad(y, [u_s, delta_s, proj], wide(dy.float(), 3))
    grads_ref = torch.autograd.grad(y_ref, exact, dy)
    for name, g, g_ref in zip("u delta B C".split(), [*grads[:2], grads[2][..., 3:7], grads[2][..., 7:]], grads_ref):
        assert rel(g.cpu(), g_ref) < 1e-5, name


def test_selective_scan_is_what_mamba_runs_on_cuda_and_equals_its_reference():
    from probe.mixers.ssm import selective_scan
    (u, delta, A, B, C, D), _ = scan_inputs(2, 33, 24, 8, seed=3)
    via_mixer = selective_scan(*(x.float().to(DEVICE) for x in (u, delta, A, B, C, D)))
    torch.testing.assert_close(via_mixer.cpu().double(), reference(u, delta, A, B, C, D), rtol=1e-4, atol=1e-5)


def test_selective_scan_without_gradients_stores_no_states():
    (u, delta, A, B, C, D), _ = scan_inputs(1, 9, 8, 4, seed=4)
    with torch.no_grad():
        y = kernels.selective_scan_kernel(*(x.float().to(DEVICE) for x in (u, delta, A, B, C, D)))
    torch.testing.assert_close(y.cpu().double(), reference(u, delta, A, B, C, D), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k, rows, length", [(3, 2, 37), (2, 1, 1)], ids=["K3-B2-L37", "K2-B1-L1"])
def test_selective_scan_under_vmap_is_each_members_own_scan_in_one_launch(k, rows, length, poisoned, monkeypatch):
    # a pack of K models: each member has its own A and D; vmap folds K into the rows and A's groups
    launches = []
    original = kernels._SelectiveScan.forward
    monkeypatch.setattr(kernels._SelectiveScan, "forward",
                        staticmethod(lambda *a: launches.append(a[0].shape) or original(*a)))
    members = [scan_inputs(rows, length, 10, 5, seed=20 + i) for i in range(k)]
    stacked = [torch.stack([m[0][j] for m in members]).float().to(DEVICE).requires_grad_() for j in range(6)]
    dy = torch.stack([m[1] for m in members]).float().to(DEVICE)
    y = torch.func.vmap(kernels.selective_scan_kernel)(*stacked)
    assert launches == [(k * rows, length, 10)], "one launch for the whole pack"
    grads = torch.autograd.grad(y, stacked, dy)
    for i, ((inputs, _), dy_i) in enumerate(zip(members, dy)):
        exact = [x.requires_grad_() for x in inputs]
        y_ref = reference(*exact)
        assert rel(y[i].cpu(), y_ref) < 1e-5
        for name, g, g_ref in zip("u delta A B C D".split(), grads,
                                  torch.autograd.grad(y_ref, exact, dy_i.double().cpu())):
            assert rel(g[i].cpu(), g_ref) < 1e-5, name



@pytest.mark.parametrize("bad, name", [("u", "u and delta"), ("A", "A must"), ("B", "B must"), ("D", "D must")])
def test_selective_scan_names_a_misshapen_input(bad, name):
    (u, delta, A, B, C, D), _ = scan_inputs(1, 5, 8, 4, seed=5)
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D)
    args[bad] = args[bad][:-1] if bad == "A" else args[bad][..., :-1]  # A: one channel short
    with pytest.raises(ValueError, match=name):
        kernels.selective_scan_kernel(*(args[k].float() for k in "u delta A B C D".split()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="full shapes need the compiled kernel on a GPU")
@pytest.mark.parametrize("rows, length, d, n", [(16, 1024, 256, 16), (32, 512, 1024, 16)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_selective_scan_at_full_shapes_matches_an_fp32_reference_on_the_gpu(rows, length, d, n, dtype):
    # the mixer bench's shape and Zoology's widest cell (d_model 512, d_inner 1024; a smaller batch for the
    # reference's sake), in the dtypes the model feeds: the reference runs in float32 on the same rounded inputs
    (u, delta, A, B, C, D), dy = scan_inputs(rows, length, d, n, seed=7)
    kernel_in = [x.to("cuda", dtype if i in (0, 1, 3, 4) else torch.float32).requires_grad_()
                 for i, x in enumerate((u, delta, A, B, C, D))]
    ref_in = [x.detach().float().requires_grad_() for x in kernel_in]
    torch.cuda.synchronize()
    y = kernels.selective_scan_kernel(*kernel_in)
    y_ref = reference(*ref_in)
    g = dy.to("cuda", dtype)
    grads = torch.autograd.grad(y, kernel_in, g)
    grads_ref = torch.autograd.grad(y_ref, ref_in, g.float())
    assert rel(y.float(), y_ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    for name, a, b in zip("u delta A B C D".split(), grads, grads_ref):
        assert torch.isfinite(a).all(), name
        assert rel(a.float(), b) < (1e-4 if dtype == torch.float32 else 2e-2), name
