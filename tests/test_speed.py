"""Every speed lever computes the same thing: on the tiny QLoRA model, one batch, lever off then on (on the same
trainer, so the same weights): loss equal within 1e-5 and every LoRA gradient within 1e-4 relative in fp32; under
bf16 autocast (where this CPU has it, or the trainer's autocast wherever it runs) within bf16's rounding."""
from __future__ import annotations

import pytest


def _loss_and_grads(trainer, batch, seed=0):
    import torch
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout draws on both sides
    with trainer.accelerator.autocast():  # what the trainer's training step does: bf16 autocast when it runs in bf16
        loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


TOL = {"float32": (1e-5, 1e-4), "bfloat16": (2e-2, 5e-2)}  # bf16 keeps 8 bits of mantissa: ~4e-3 per rounding


def _assert_same(off, on, dtype="float32"):
    (loss_off, g_off), (loss_on, g_on) = off, on
    tol_loss, tol_grad = TOL[dtype]
    assert abs(loss_on - loss_off) < tol_loss, (loss_off, loss_on)
    assert g_off.keys() == g_on.keys() and len(g_off) > 0
    for name, g in g_off.items():
        assert g.abs().sum() > 0, f"{name}: zero gradient proves nothing"
        rel = float((g_on[name] - g).norm() / g.norm())
        assert rel < tol_grad, (name, rel)


def _trainer(tiny_config, tmp_path, dtype="float32", **train):
    import torch

    from studio.train.recipe import build_trainer
    cfg = tiny_config.replace(model={"compute_dtype": dtype}, lora={"dropout": 0.1},
                              train={"levers": ["none"], **train})
    trainer, _, _ = build_trainer(cfg, tmp_path / "run")
    assert not trainer.studio_labelled_head
    assert trainer.args.bf16 == (dtype == "bfloat16")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)  # mixed precision
    torch.manual_seed(1)
    for n, p in trainer.model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero, which would make every A gradient zero
            p.data.normal_(0, 0.05)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, batch


def _rand_dropout(x, p=0.5, training=True, inplace=False):
    """torch's dropout with the mask drawn as the fused lever draws it (speed.keep_mask), so both see the same mask."""
    import torch

    from studio.train import speed
    if not training or p == 0:
        return x
    return torch.where(speed.keep_mask(x.shape, p, x.device), x, 0.0) / (1 - speed.mask_p(p))


@pytest.mark.train
@pytest.mark.parametrize("packing,dtype", [(True, "float32"), (False, "float32"), (True, "bfloat16")])
def test_lmhead_lever_same_loss_and_grads(tiny_config, tmp_path, packing, dtype):
    from studio.train import speed
    trainer, batch = _trainer(tiny_config, tmp_path, dtype, packing=packing)
    assert ("attention_mask" in batch) != packing  # padding-free (one row) and padded (several rows) batches
    off = _loss_and_grads(trainer, batch)
    assert speed.apply(trainer, "cpu", {"lmhead"}) == ["lmhead"]
    _assert_same(off, _loss_and_grads(trainer, batch), dtype)
    trainer.model.eval()  # the eval loss goes the same way
    import torch
    with torch.no_grad():
        ev_on = float(trainer.compute_loss(trainer.model, dict(batch)))
        trainer.studio_labelled_head = False
        ev_off = float(trainer.compute_loss(trainer.model, dict(batch)))
    assert abs(ev_on - ev_off) < TOL[dtype][0]


@pytest.mark.train
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dropout_lever_same_loss_and_grads(tiny_config, tmp_path, monkeypatch, dtype):
    import torch

    from studio.train import speed
    monkeypatch.setattr(torch.nn.functional, "dropout", _rand_dropout)
    trainer, batch = _trainer(tiny_config, tmp_path, dtype)
    off = _loss_and_grads(trainer, batch)
    lin = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    a_before = lin.lora_A["default"]
    applied = speed.apply(trainer, "cpu", {"dropout"})
    assert applied and applied[0].startswith("dropout (")
    a_after = lin.lora_A["default"]
    assert type(a_before) is torch.nn.Linear, "the library's module keeps its class"
    assert a_after is not a_before and a_after.weight is a_before.weight  # a new module on the same Parameter
    assert isinstance(lin.lora_dropout["default"], torch.nn.Identity)
    _assert_same(off, _loss_and_grads(trainer, batch), dtype)
    # the adapter saves under the same parameter names
    assert any(k.endswith("q_proj.lora_A.default.weight") for k in trainer.model.state_dict())


def test_dropout_lever_draws_a_real_dropout(tiny_config, tmp_path):
    """Without the test's shared mask: the fused dropout drops ~p of the inputs and rescales by 1/(1-p)."""
    import torch

    from studio.train import speed
    lin = torch.nn.Linear(64, 8, bias=False)
    fused = speed._dropout_linear_cls()(lin, 0.25)
    x = torch.ones(4000, 64)
    y = fused(x)
    kept = torch.nn.functional.linear(x, lin.weight)
    assert torch.allclose(y.mean(0), kept.mean(0), rtol=0.1, atol=0.05)  # unbiased
    fused.eval()
    assert torch.equal(fused(x), kept)


@pytest.mark.train
def test_own_weights_lever_same_loss_and_grads(tiny_config, tmp_path):
    from studio.train import speed
    trainer, batch = _trainer(tiny_config, tmp_path)
    off = _loss_and_grads(trainer, batch)
    applied = speed.apply(trainer, "cpu", {"own_weights"})
    assert applied and applied[0].startswith("own_weights (")
    _assert_same(off, _loss_and_grads(trainer, batch))


def test_keep_mask_is_a_fair_bernoulli_draw():
    import torch

    from studio.train import speed
    assert abs(speed.mask_p(0.05) - 0.05) < 2e-5 and speed.mask_p(0.0) == 0.0
    torch.manual_seed(0)
    for p in (0.05, 0.1, 0.5):
        keep = speed.keep_mask((3, 1001, 67), p)  # a size that is not a multiple of 4
        assert keep.shape == (3, 1001, 67) and keep.dtype == torch.bool
        for lane in range(4):  # each 16-bit lane of the 64-bit draws, the top one included
            share = keep.flatten()[lane::4].float().mean().item()
            assert abs(share - (1 - p)) < 0.01, (p, lane, share)
    a, b = speed.keep_mask((1000,), 0.5), speed.keep_mask((1000,), 0.5)
    assert not torch.equal(a, b)  # fresh draws


@pytest.mark.train
def test_attn_fp32_lever_same_loss_and_grads(tiny_config, tmp_path):
    """bf16 autocast run: the packed attention in fp32 gives bf16's loss and gradients within bf16's rounding
    (it is the more precise of the two), through the attention registry, not a patched forward."""
    from studio.train import speed
    trainer, batch = _trainer(tiny_config, tmp_path, "bfloat16")
    assert trainer.model.config._attn_implementation == speed.PACKED_SDPA
    off = _loss_and_grads(trainer, batch)
    assert speed.apply(trainer, "cpu", {"attn_fp32"}) == ["attn_fp32"]
    assert trainer.model.config._attn_implementation == speed.PACKED_SDPA_FP32
    _assert_same(off, _loss_and_grads(trainer, batch), "bfloat16")
    fp32, _ = _trainer(tiny_config, tmp_path / "fp32", "float32")
    assert speed.apply(fp32, "cpu", {"attn_fp32"}) == []  # nothing to do where attention already runs in fp32


def test_auto_means_what_was_measured_per_device():
    from studio.train import speed
    assert speed.resolve(["auto"], "cpu") == {"lmhead", "dropout", "own_weights", "attn_fp32"}
    assert speed.resolve(["auto"], "cuda") == set()  # none measured on a GPU, Liger included: only when named
    assert "liger" in speed.resolve(["auto", "liger"], "cuda")
    assert speed.resolve(["none"], "cpu") == set() and speed.resolve([], "cpu") == set()
    assert speed.resolve(["lmhead"], "cuda") == {"lmhead"}


def test_levers_are_a_validated_config_field():
    from studio.config import RunConfig
    assert RunConfig().train.levers == ["auto"]
    assert RunConfig().replace(train={"levers": "lmhead, dropout"}).train.levers == ["lmhead", "dropout"]
    with pytest.raises(ValueError, match="Speed levers"):
        RunConfig().replace(train={"levers": ["swiglu"]})
