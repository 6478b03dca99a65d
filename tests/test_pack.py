"""Packed training: K runs that differ only in learning rate, weight decay and stop-at train as one model, and
each member's trajectory is the one it would have had alone. Generated from the registry: registering a mixer
tests it in a pack."""
import dataclasses
import math

import pytest
import torch

from probe.errors import ProbeError
from probe.mixers import MIXERS
from probe.model import build_model
from probe.pack import PackedAdamW, PackedModel
from probe.train import ModelConfig, RunSpec, TrainConfig, fit, train
from tasks.mqar import MQAR

TASK = MQAR(seq_len=16, vocab_size=16, num_kv_pairs=2, eval_seq_lens=(32,))
BASE = TrainConfig(batch_size=16, max_steps=24, warmup_steps=4, num_train=128, num_test=32, val_every=8,
                   stop_at=None, device="cpu")
LRS = (1e-3, 3e-3, 1e-2, 2e-2)


def models(arch, k, dtype=torch.float64):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(build_model(arch, vocab_size=16, d_model=16, n_layers=2, max_seq_len=64).to(dtype))
    return out


@pytest.mark.parametrize("arch", sorted(MIXERS))
def test_every_arch_in_a_pack_computes_each_members_own_outputs_and_gradients(arch):
    members = models(arch, 3)
    pack = PackedModel(members)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 16, (2, 33), generator=g)
    positions = torch.tensor([[0, 5, 32], [3, 4, 31]])
    for _ in range(2):  # twice: a tensor a mixer cached during the first call would break the second
        out = pack.scored_logits(inputs, positions)  # [K, B, M, V]
    out.square().sum().backward()
    for k, model in enumerate(members):
        hidden = model.hidden(inputs)
        own = model.logits(hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])))
        torch.testing.assert_close(out[k], own, rtol=1e-9, atol=1e-9)
        own.square().sum().backward()
        for name, p, stacked in zip(pack.param_names, model.parameters(), pack.stacked):
            torch.testing.assert_close(stacked.grad[k], p.grad, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("arch", sorted(MIXERS))
def test_under_autocast_a_pack_computes_in_the_dtypes_a_single_run_does(arch):
    """bf16 autocast (bf16-mixed on CUDA; the CPU's autocast here): every linear layer's output has the dtype it
    has in a single run (vmap splits a batched linear into a product, which autocast casts, and a bias add, which
    it does not, so without care a pack's biased layers came out float32), and the logits are the single run's
    within bf16 tolerance."""
    members = models(arch, 2, torch.float32)
    inputs = torch.randint(0, 16, (2, 24), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 5, 23], [3, 4, 22]])

    def run(pack):
        seen = []
        hooks = [m.register_forward_hook(lambda mod, args, out, name=name: seen.append((name, out.dtype)))
                 for name, m in pack.template.named_modules() if isinstance(m, torch.nn.Linear)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = pack.scored_logits(inputs, positions)
        for h in hooks:
            h.remove()
        return logits, seen
    packed, packed_dtypes = run(PackedModel(members))
    for k, member in enumerate(members):
        alone, alone_dtypes = run(PackedModel([member]))
        assert packed_dtypes == alone_dtypes
        torch.testing.assert_close(packed[k].float(), alone[0].float(), rtol=0.05, atol=0.05)


def test_a_pack_of_compression_models_computes_each_members_own_outputs_and_gradients():
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(build_model("attention", vocab_size=16, d_model=16, n_layers=2, max_seq_len=64,
                                   decoder="compression").double())
    pack = PackedModel(members)
    inputs = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 5, 10], [3, 4, 11]])
    out = pack.scored_logits(inputs, positions)  # [K, B, M, V], decoded from each member's last position
    out.square().sum().backward()
    for k, model in enumerate(members):
        own = model(inputs).gather(1, positions[..., None].expand(-1, -1, 16))
        torch.testing.assert_close(out[k], own, rtol=1e-9, atol=1e-9)
        own.square().sum().backward()
        for name, p, stacked in zip(pack.param_names, model.parameters(), pack.stacked):
            torch.testing.assert_close(stacked.grad[k], p.grad, rtol=1e-7, atol=1e-9, msg=name)
    assert any(name.startswith("model.decoder.") for name in pack.param_names)


@pytest.mark.parametrize("ops", ["ref", "triton"])
def test_packed_adamw_steps_each_member_as_torch_adamw_would(ops, monkeypatch):
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU runs the kernel compiled
    torch.manual_seed(0)
    lrs, wds = [1e-3, 1e-2, 3e-2], [0.0, 0.1, 0.5]
    members = [m.to(device) for m in models("baseconv", 3, torch.float32)]
    singles = [m.to(device) for m in models("baseconv", 3, torch.float32)]  # the same seeds: the same weights
    pack = PackedModel(members)
    opt = PackedAdamW(pack, lr=lrs, weight_decay=wds)
    own = [torch.optim.AdamW([{"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": wd},
                              {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0}], lr=lr)
           for m, lr, wd in zip(singles, lrs, wds)]
    positions = torch.tensor([[1, 7, 15]] * 4, device=device)
    for step in range(5):
        inputs = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(step)).to(device)
        opt.zero_grad()
        # the model's ops as references (a pack and a single run reach the kernels through different launches, and
        # Adam turns their float rounding into O(lr) steps); only the update runs as `ops` says
        monkeypatch.setenv("PROBE_OPS", "ref")
        pack.scored_logits(inputs, positions).square().mean(dim=(1, 2, 3)).sum().backward()
        monkeypatch.setenv("PROBE_OPS", ops)  # triton: the fused update kernel (the interpreter on a CPU)
        opt.step()
        monkeypatch.setenv("PROBE_OPS", "ref")
        for m, o in zip(singles, own):
            o.zero_grad()
            hidden = m.hidden(inputs)
            m.logits(hidden.gather(1, positions[..., None].expand(-1, -1, 16))).square().mean().backward()
            o.step()
    for k, m in enumerate(singles):
        for p, stacked in zip(m.parameters(), pack.stacked):
            torch.testing.assert_close(stacked[k], p, rtol=1e-5, atol=1e-6)


def curve(record):
    return [(h["step"], h["loss"], h["accuracy"]) for h in (record["history"] if isinstance(record, dict)
                                                           else record.history)]


def assert_same_trajectory(a, b, rel=1e-6, acc=1e-9):
    assert [s for s, _, _ in a] == [s for s, _, _ in b]
    for (_, loss_a, acc_a), (_, loss_b, acc_b) in zip(a, b):
        assert math.isclose(loss_a, loss_b, rel_tol=rel, abs_tol=rel), (a, b)
        assert abs(acc_a - acc_b) <= acc, (a, b)


@pytest.fixture
def float64():
    """Exact arithmetic for trajectories: in float32 a few archs (gla_scalar) amplify rounding differences between
    a batched and an unbatched matmul into a different curve within 16 steps; in float64 they cannot."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("arch", sorted(MIXERS))
def test_a_pack_of_four_trains_like_four_single_runs(arch, float64):
    specs = [RunSpec(TASK, arch, ModelConfig(d_model=16), dataclasses.replace(BASE, lr=lr)) for lr in LRS]
    packed = fit(specs)
    for spec, record in zip(specs, packed):
        single = train(TASK, arch, spec.model, spec.train)
        assert record.pack_size == 4 and single["pack_size"] == 1
        assert_same_trajectory(curve(record), curve(single))
        assert record.accuracy == pytest.approx(single["accuracy"], abs=1e-9)


@pytest.mark.parametrize("arch", ["attention", "baseconv", "mamba"])
def test_a_float32_pack_stays_within_float_tolerance_of_single_runs(arch):
    specs = [RunSpec(TASK, arch, ModelConfig(d_model=16), dataclasses.replace(BASE, lr=lr)) for lr in LRS[:2]]
    for spec, record in zip(specs, fit(specs)):
        # a near-tie may flip an argmax in float32: a token or two of the 64 scored
        assert_same_trajectory(curve(record), curve(train(TASK, arch, spec.model, spec.train)), rel=2e-3, acc=0.05)


def test_members_that_stop_diverge_or_are_pruned_leave_the_others_unchanged(float64):
    arch = "attention"
    cfgs = [dataclasses.replace(BASE, lr=1e30),  # diverges
            dataclasses.replace(BASE, lr=1e-2, stop_at=0.01),  # reaches its target at the first evaluation
            dataclasses.replace(BASE, lr=3e-3),  # pruned by its judge at step 16
            dataclasses.replace(BASE, lr=1e-2)]  # trains to the end
    judges = [lambda step, acc: None, lambda step, acc: None,
              lambda step, acc: "pruned at 16" if step == 16 else None, lambda step, acc: None]
    records = fit([RunSpec(TASK, arch, ModelConfig(d_model=16), c) for c in cfgs], judges=judges)
    diverged, stopped, pruned, full = records
    assert diverged.diverged and "non-finite" in diverged.diverged and diverged.steps == 8
    assert stopped.stopped_at_target and stopped.steps == 8 and len(stopped.history) == 1
    assert pruned.pruned == "pruned at 16" and pruned.steps == 16 and not pruned.diverged
    assert full.steps == 24 and full.diverged is None and full.pruned is None
    # the survivors' trajectories are those they have alone
    assert_same_trajectory(curve(full), curve(train(TASK, arch, ModelConfig(d_model=16), cfgs[3])))
    alone = train(TASK, arch, ModelConfig(d_model=16), cfgs[2])
    assert_same_trajectory(curve(pruned), curve(alone)[:2])


def test_the_first_member_to_reach_its_target_ends_the_pack_when_asked(float64):
    arch = "attention"
    cfgs = [dataclasses.replace(BASE, lr=3e-3),  # still training when the second member gets there
            dataclasses.replace(BASE, lr=1e-2, stop_at=0.01),  # reaches its target at the first evaluation
            dataclasses.replace(BASE, lr=1e-2)]
    specs = [RunSpec(TASK, arch, ModelConfig(d_model=16), c) for c in cfgs]
    slow, solver, other = fit(specs, end_at_first_target=True, log_names=["a", "b", "c"])
    assert solver.stopped_at_target and solver.pruned is None and solver.steps == 8
    for record in (slow, other):
        assert not record.stopped_at_target and record.steps == 8 and len(record.history) == 1
        assert record.pruned == "stopped at step 8: b reached the target accuracy 0.01 first"
    # up to there, each is the run it would have been alone; without the option, the pack trains on
    assert_same_trajectory(curve(slow), curve(train(TASK, arch, ModelConfig(d_model=16), cfgs[0]))[:1])
    assert [r.steps for r in fit(specs)] == [24, 8, 24]


def test_runs_that_differ_in_more_than_lr_weight_decay_and_stop_at_do_not_share_a_pack():
    a = RunSpec(TASK, "attention", ModelConfig(d_model=16), BASE)
    with pytest.raises(ProbeError, match="differ only in lr, weight_decay and stop_at"):
        fit([a, dataclasses.replace(a, train=dataclasses.replace(BASE, seed=1))])
    with pytest.raises(ProbeError, match="differ only"):
        fit([a, dataclasses.replace(a, model=ModelConfig(d_model=32))])


def test_a_paused_pack_resumed_trains_on_as_if_it_had_never_stopped(float64, tmp_path):
    import io
    import threading

    import lightning as L

    from probe.train import Paused
    from probe.tuning import plateau_judge
    cfg = dataclasses.replace(BASE, num_train=96)  # 6 batches an epoch: the pause at step 8 is mid-epoch
    specs = [RunSpec(TASK, "attention", ModelConfig(d_model=16), dataclasses.replace(cfg, lr=lr))
             for lr in (1e-2, 3e-3, 2e-2)]

    def judges():  # member 1 leaves at the first evaluation, before the pause; member 2's judge has state:
        # a plateau of 8 steps without +1.0 stops it at step 16, which it sees only if shown step 8 again
        return [lambda step, acc: None, lambda step, acc: "out at 8" if step == 8 else None,
                plateau_judge(8, 1.0)]
    whole = fit(specs, judges=judges())

    pause = threading.Event()

    class PauseAt5(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                pause.set()
    with pytest.raises(Paused) as paused:
        fit(specs, judges=judges(), pause=pause, callbacks=[PauseAt5()])
    state = paused.value.state
    assert state["step"] == 8 and state["rows"] == [0, 2]
    buffer = io.BytesIO()  # as a worker keeps it: through a file
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = fit(specs, judges=judges(), resume=torch.load(buffer, weights_only=False))
    for a, b in zip(whole, resumed):
        assert_same_trajectory(curve(a), curve(b), rel=1e-12, acc=0.0)
        assert (a.steps, a.pruned, a.accuracy) == (b.steps, b.pruned, b.accuracy)
        assert b.train_time_s > 0 and b.wall_time_s > state["wall_time"] > 0  # the time before the pause too
    assert [r.steps for r in resumed] == [24, 8, 16] and resumed[2].pruned.startswith("plateau")
    with pytest.raises(ProbeError, match="other runs or settings"):
        fit(specs[:2], resume=state)
