"""Each module on its own: shapes, masks, routing, identities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unictr.config import SequenceModelSpec
from unictr.modules.broadcast import BroadcastLinear
from unictr.modules.calibration import LogitCalibration
from unictr.modules.dcn import DCNv2Projection
from unictr.modules.embedding import FusedEmbedding, RowwiseAdagrad, dense_lookup
from unictr.modules.mmoe import MMoE
from unictr.modules.native import kernel as native_kernel
from unictr.modules.sequence import (
    TargetAttention,
    TransformerEncoder,
    random_window_mask,
    short_term_mean,
    time_bucket,
)
from unictr.modules.towers import TowerTree


def test_fused_embedding_equals_per_table_lookup() -> None:
    torch.manual_seed(0)
    emb = FusedEmbedding(["a", "b", "c"], [10, 7, 3], 4)
    ids = torch.stack([torch.randint(0, 10, (5,)), torch.randint(0, 7, (5,)), torch.randint(0, 3, (5,))], 1)
    out = emb((ids + emb.table_offsets(["a", "b", "c"])).flatten()).view(5, 3, 4)
    tables = emb.weight.split([10, 7, 3])
    for j in range(3):
        torch.testing.assert_close(out[:, j], tables[j][ids[:, j]])


def test_fused_embedding_init_std() -> None:
    """N(0, 1/sqrt(dim)) by default, N(0, init_std) when given (`model.embedding_init_std`); 64,000 draws
    each, so the sample std is within 2% (about 7 standard errors)."""
    torch.manual_seed(0)
    default = FusedEmbedding(["a", "b"], [3000, 1000], 16)
    small = FusedEmbedding(["a", "b"], [3000, 1000], 16, init_std=1e-4)
    assert default.weight.std().item() == pytest.approx(0.25, rel=0.02)
    assert small.weight.std().item() == pytest.approx(1e-4, rel=0.02)


def test_fused_embedding_bags_sum() -> None:
    emb = FusedEmbedding(["a"], [20], 3)
    bags = torch.randint(0, 20, (4, 10))
    torch.testing.assert_close(emb(bags), emb.weight[bags].sum(1))


def test_fused_embedding_dense_gradient_is_torchs_bit_for_bit() -> None:
    """The CPU lookup's own backward (one index_add_) gives torch's embedding gradient exactly, duplicates
    summed in the same order; a grad-free lookup (serving, export) returns the same rows."""
    torch.manual_seed(0)
    emb = FusedEmbedding(["a", "b"], [300, 20], 16)
    rows = torch.randint(0, 320, (5000,))  # ~15 looks per row
    grad = torch.randn(5000, 16)
    out = emb(rows)
    assert out.grad_fn is not None and "DenseLookup" in type(out.grad_fn).__name__
    out.backward(grad)
    assert torch.equal(emb.weight.grad, torch.ops.aten.embedding_dense_backward(grad, rows, 320, -1, False))
    with torch.no_grad():
        torch.testing.assert_close(emb(rows), emb.weight[rows], rtol=0, atol=0)


def test_dense_lookup_of_any_shape_is_torchs_embedding_bit_for_bit() -> None:
    """The sequence's action and age tables: `[U, L]` ids into a few rows, forward and weight gradient
    exactly F.embedding's (the encoders use it for speed; their training must not move)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (50, 64))
    grad = torch.randn(50, 64, 8)
    grads = []
    for lookup in (dense_lookup, lambda w, i: F.embedding(i, w)):
        w = torch.randn(7, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out = lookup(w, ids)
        assert out.shape == (50, 64, 8)
        out.backward(grad)
        grads.append((out.detach(), w.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_time_buckets_monotone_and_clamped() -> None:
    b = time_bucket(torch.tensor([0.0, 1.0, 3.0, 1e3, 1e12]), 16)
    assert b.tolist() == [0, 1, 2, 9, 15]


def _encoder(**kw) -> TransformerEncoder:
    spec = SequenceModelSpec(time_buckets=16, layers=2, heads=2, ff_mult=2, dropout=0.0, last_k=2,
                             window_mask_prob=0.0, window_max_seconds=100.0)
    return TransformerEncoder(spec.model_copy(update=kw), dim=8, num_actions=4)


def _seq(u: int = 3, length: int = 6) -> tuple[torch.Tensor, ...]:
    item = torch.randn(u, length, 8)
    action = torch.randint(0, 4, (u, length))
    age = torch.rand(u, length) * 1000
    lens = torch.tensor([length, 2, 0])[:u]
    mask = torch.arange(length)[None, :] >= (length - lens)[:, None]  # left-padded
    return item, action, age, mask


def test_sequence_padding_is_ignored() -> None:
    torch.manual_seed(0)
    enc = _encoder().eval()
    item, action, age, mask = _seq()
    tokens, tmask, summary = enc(item, action, age, mask)
    assert tokens.shape == (3, 7, 8) and tmask.shape == (3, 7) and summary.shape == (3, 24)
    assert torch.isfinite(summary).all()  # the empty sequence (user 2) included
    noisy = torch.where(mask[..., None], item, torch.randn_like(item) * 100)
    _, _, summary2 = enc(noisy, torch.where(mask, action, 3), torch.where(mask, age, 5.0), mask)
    torch.testing.assert_close(summary, summary2)


def test_window_mask_hides_only_recent_events_and_follows_seed() -> None:
    age = torch.tensor([[500.0, 50.0, 5.0], [500.0, 50.0, 5.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    torch.manual_seed(1)
    m1 = random_window_mask(age, mask, prob=1.0, max_seconds=1000.0)
    torch.manual_seed(1)
    m2 = random_window_mask(age, mask, prob=1.0, max_seconds=1000.0)
    assert torch.equal(m1, m2)
    for row in m1:  # masked events are a suffix of the newest ones
        kept = row.tolist()
        assert kept == sorted(kept, reverse=True)
    assert random_window_mask(age, mask, prob=0.0, max_seconds=1000.0).all()


def test_window_mask_only_in_training() -> None:
    torch.manual_seed(0)
    enc = _encoder(window_mask_prob=1.0, window_max_seconds=1e9)
    item, action, age, mask = _seq()
    enc.eval()
    a = enc(item, action, age, mask)[2]
    b = enc(item, action, age, mask)[2]
    torch.testing.assert_close(a, b)
    enc.train()
    c = enc(item, action, age, mask)[2]
    assert not torch.allclose(a[:2], c[:2])  # a 1e9 s window hides every event of the users that had some


def test_short_term_mean_averages_the_session_events_only() -> None:
    """The mean of the real events younger than the window; padding, older events and masked ones stay out;
    a user without any gets zeros, not NaN."""
    torch.manual_seed(0)
    events = torch.randn(3, 4, 5)
    mask = torch.tensor([[True, True, True, True], [False, False, True, True], [True, True, True, False]])
    age = torch.tensor([[5000.0, 800.0, 100.0, 10.0], [0.0, 0.0, 2000.0, 3000.0], [10.0, 20.0, 5000.0, 30.0]])
    out = short_term_mean(events, mask, age, 900.0)
    torch.testing.assert_close(out[0], events[0, 1:].mean(0))  # 5000 s is outside the window
    torch.testing.assert_close(out[1], torch.zeros(5), rtol=0, atol=0)  # the young ones are padding
    torch.testing.assert_close(out[2], events[2, :2].mean(0))  # the masked 30 s event stays out
    torch.testing.assert_close(short_term_mean(events, mask, age, 1e9)[1], events[1, 2:].mean(0))


def test_target_attention_uses_own_users_events() -> None:
    torch.manual_seed(0)
    att = TargetAttention(8)
    tokens = torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    q = torch.randn(3, 8)
    ui = torch.tensor([0, 1, 1])
    raw = torch.randn(2, 3, 8)  # events without the start token
    out = att(q, raw, tokens, mask, ui)
    tokens2, raw2 = tokens.clone(), raw.clone()
    tokens2[0] += 1.0  # changing user 0 changes only row 0
    raw2[0] -= 1.0
    for t, r in ((tokens2, raw), (tokens, raw2)):
        out2 = att(q, r, t, mask, ui)
        assert not torch.allclose(out[0], out2[0])
        torch.testing.assert_close(out[1:], out2[1:])


def test_broadcast_linear_equals_linear_on_repeated_rows() -> None:
    torch.manual_seed(0)
    lin = BroadcastLinear(5, 3, 4)
    u, c, ui = torch.randn(2, 5), torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 1, 0])
    full = nn.Linear(8, 4)
    with torch.no_grad():
        full.weight.copy_(torch.cat([lin.user.weight, lin.cand.weight], 1))
        full.bias.copy_(lin.cand.bias)
    torch.testing.assert_close(lin(u, c, ui), full(torch.cat([u[ui], c], 1)))


def test_mmoe_gates_per_surface_and_task() -> None:
    torch.manual_seed(0)
    mmoe = MMoE(5, 3, experts=4, hidden=8, out_dim=6, surfaces=3, tasks=2)
    u, c, ui = torch.randn(1, 5), torch.randn(4, 3).expand(4, 3).clone(), torch.zeros(4, dtype=torch.long)
    c[:] = c[0]  # identical rows, different surfaces
    out = mmoe(u, c, ui, torch.tensor([0, 1, 2, 0]))
    assert out.shape == (4, 2, 6)
    torch.testing.assert_close(out[0], out[3])
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0, 0], out[0, 1])
    single = MMoE(5, 3, experts=4, hidden=8, out_dim=6, surfaces=3, tasks=2, enabled=False)
    s_out = single(u, c, ui, torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(s_out[:, 0], s_out[:, 1])


def test_dcn_projection_shrinks() -> None:
    for rank in (None, 4):
        proj = DCNv2Projection(32, layers=2, rank=rank, out_dim=8)
        assert proj(torch.randn(5, 32)).shape == (5, 8)
    low, full = DCNv2Projection(32, 1, 4, 8), DCNv2Projection(32, 1, None, 8)
    assert sum(p.numel() for p in low.cross.parameters()) < sum(p.numel() for p in full.cross.parameters())


def test_towers_see_only_their_rows() -> None:
    torch.manual_seed(0)
    tree = TowerTree(6, late_columns=[[0, 2], [1, 2], [2]], late_dim=3, hidden=[4], tasks=2,
                     tower_of_surface=[0, 1, 2])
    seen: dict[int, int] = {}
    for i, t in enumerate(tree.towers):
        t.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0].shape[0]))
    surface = torch.tensor([0, 1, 1, 0, 0, 1])
    z, late = torch.randn(6, 6, requires_grad=True), torch.randn(6, 3, 3)
    logits = tree(z, late, surface)
    assert seen == {0: 3, 1: 3}  # tower 2 has no rows and never runs
    logits[surface == 0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in tree.towers[1].parameters())
    assert z.grad[surface == 1].abs().sum() == 0
    one = tree.towers[0](z[surface == 0], late[surface == 0][:, [0, 2]].flatten(1))
    torch.testing.assert_close(logits[surface == 0], one)


def test_calibration_identity_at_init() -> None:
    cal = LogitCalibration(keys=6, tasks=3)
    logits = torch.randn(10, 3)
    torch.testing.assert_close(cal(logits, torch.randint(0, 6, (10,))), logits)


def _reference_rowwise_adagrad(weight: Tensor, acc: Tensor, grad: Tensor, lr: float, eps: float) -> None:
    """The textbook update on a dense table gradient, for the rows with a non-zero gradient."""
    rows = grad.abs().sum(1).nonzero().squeeze(1)
    acc[rows] += grad[rows].pow(2).mean(1)
    weight[rows] -= lr * grad[rows] / (acc[rows].sqrt() + eps)[:, None]


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "torch_ops"])
@pytest.mark.parametrize("k", [1, 3])
def test_fused_rowwise_adagrad_matches_reference(k: int, native: bool) -> None:
    """The update applied inside the backward equals autograd's table gradient + row-wise Adagrad, with
    repeated ids summed exactly, over two steps (the accumulator carries over); no table gradient is made.
    Both implementations: the compiled CPU kernel and the torch-ops one (CUDA, or where no compiler is)."""
    if native and native_kernel()[0] is None:
        pytest.skip(f"compiled kernel not available here: {native_kernel()[1]}")
    torch.manual_seed(0)
    emb = FusedEmbedding(["a", "b"], [7, 5], 4)
    ref_w, ref_acc = emb.weight.detach().clone(), torch.zeros(12)
    emb.fused_update = RowwiseAdagrad(12, lr=0.1, eps=1e-8, native=native)
    for step in range(2):
        rows = torch.tensor([[0, 0, 3], [8, 3, 3], [11, 0, 7], [2, 2, 2]])[:, :k]
        coef = torch.randn(4, 4)
        lookup = rows.reshape(-1) if k == 1 else rows
        (emb(lookup) * coef).sum().backward()
        w = ref_w.clone().requires_grad_(True)
        pooled = F.embedding_bag(rows, w, mode="sum")
        (pooled * coef).sum().backward()
        _reference_rowwise_adagrad(ref_w, ref_acc, w.grad, 0.1, 1e-8)
        torch.testing.assert_close(emb.weight.detach(), ref_w, rtol=1e-6, atol=1e-6, msg=f"step {step}")
        torch.testing.assert_close(emb.fused_update.sum_sq, ref_acc, rtol=1e-6, atol=1e-7)
        assert emb.weight.grad is None
    with torch.no_grad():  # inference: a plain lookup, no update
        before = emb.weight.detach().clone()
        emb(torch.tensor([0, 1]))
        assert torch.equal(emb.weight, before)


def test_compiled_rowwise_adagrad_rejects_ids_outside_the_table() -> None:
    """The compiled kernel checks every id before writing anything: a bad step changes nothing, and the
    next step is exact (its scratch state is intact)."""
    if native_kernel()[0] is None:
        pytest.skip(f"compiled kernel not available here: {native_kernel()[1]}")
    opt = RowwiseAdagrad(5, lr=0.1)
    weight = torch.zeros(5, 2)
    with pytest.raises(RuntimeError, match="id 7 outside the table"):
        opt.update(weight, torch.tensor([[1], [7]]), torch.ones(2, 2))
    assert torch.equal(weight, torch.zeros(5, 2)) and torch.equal(opt.sum_sq, torch.zeros(5))
    opt.update(weight, torch.tensor([[1], [1]]), torch.ones(2, 2))  # row 1: gradient 2 per column
    torch.testing.assert_close(opt.sum_sq, torch.tensor([0.0, 4.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(weight[1], torch.full((2,), -0.1 * 2 / (2 + 1e-8)))
    assert torch.equal(weight[[0, 2, 3, 4]], torch.zeros(4, 2))


def test_failed_kernel_build_warns_and_falls_back(monkeypatch) -> None:
    """Without a working compiler the update still runs (torch ops), after one warning that says why."""
    import torch.utils.cpp_extension as cpp

    from unictr.modules import native

    def broken(**_: object) -> None:
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp, "load_inline", broken)
    native.kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="Ninja is required"):
            assert native.kernel() == (None, "RuntimeError: Ninja is required to load C++ extensions")
        opt = RowwiseAdagrad(3, lr=0.1)
        weight = torch.zeros(3, 2)
        opt.update(weight, torch.tensor([[2]]), torch.ones(1, 2))
        torch.testing.assert_close(weight[2], torch.full((2,), -0.1 / (1 + 1e-8)))
    finally:
        native.kernel.cache_clear()


def test_fused_update_refuses_jagged_bags() -> None:
    """With the optimizer fused into the lookup, jagged bags are refused rather than silently left untrained."""
    emb = FusedEmbedding(["a"], [4], 2)
    emb.fused_update = RowwiseAdagrad(4, lr=0.1)
    with pytest.raises(ValueError, match="jagged bags"):
        emb(torch.tensor([0, 1, 2]), torch.tensor([0, 2]))
    with torch.no_grad():  # inference takes jagged bags as before
        assert emb(torch.tensor([0, 1, 2]), torch.tensor([0, 2])).shape == (2, 2)
