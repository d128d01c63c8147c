"""Analog LSTM layers and the character model against references.

* The floating-point twin (``ideal`` preset) is ``torch.nn.LSTM`` + ``torch.nn.Linear``: same
  logits, same gradients (the recorded pairs, summed ``delta^T z``, against autograd), and the same
  SGD trajectory.
* Gradients reaching the tiles against central finite differences of the model's own loss.
* The RPU model (``rpu_baseline``) learns a small repetitive text.
* Dropout placement, evaluation without dropout, determinism, checkpoints, sampling.
"""

import functools
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit

from rpusim import RPUConfig, lstm_loop
from rpusim.layers import AnalogLinear, AnalogLSTM, AnalogLSTMLayer
from rpusim.model import CharLSTM

IDEAL = RPUConfig.preset("ideal")
BASELINE = RPUConfig.preset("rpu_baseline")
CELLS = ["numba", "torch"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(V, T, B, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, V, (T, B), generator=gen)
    targets = torch.randint(0, V, (T, B), generator=gen)
    return inputs, targets


def _random_state(L, B, H, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(L, B, H, generator=gen), 0.5 * torch.randn(L, B, H, generator=gen)


def _set_cell(model, cell):
    for layer in model.lstm.layers:
        layer.cell_backend = cell


def _torch_twin(model):
    """``nn.LSTM`` + ``nn.Linear`` holding the model's tile weights (``bias_hh`` = 0, frozen)."""
    V, H, L = model.vocab_size, model.hidden, model.num_layers
    lstm, lin = torch.nn.LSTM(V, H, L), torch.nn.Linear(H, V)
    with torch.no_grad():
        for k, layer in enumerate(model.lstm.layers):
            W, n = layer.tile.get_weights(), layer.n_in
            getattr(lstm, f"weight_ih_l{k}").copy_(W[:, :n])
            getattr(lstm, f"weight_hh_l{k}").copy_(W[:, n : n + H])
            getattr(lstm, f"bias_ih_l{k}").copy_(W[:, n + H])
            getattr(lstm, f"bias_hh_l{k}").zero_()
            getattr(lstm, f"bias_hh_l{k}").requires_grad_(False)
        W = model.decoder.tile.get_weights()
        lin.weight.copy_(W[:, :H])
        lin.bias.copy_(W[:, H])
    return lstm, lin


def _torch_grads(lstm, lin):
    """Autograd's gradients laid out as the tiles: ``[W_ih, W_hh, b]`` per layer, ``[W, b]``."""
    grads = []
    for k in range(lstm.num_layers):
        g = [getattr(lstm, f"{name}_l{k}").grad for name in ("weight_ih", "weight_hh")]
        grads.append(torch.cat([*g, getattr(lstm, f"bias_ih_l{k}").grad[:, None]], dim=1))
    grads.append(torch.cat([lin.weight.grad, lin.bias.grad[:, None]], dim=1))
    return grads


def _tile_grads(model):
    """The gradient each tile's update would apply: ``sum_k delta_k z_k^T`` of its pairs."""
    layers = [*model.lstm.layers, model.decoder]
    return [(d.double().t() @ z.double()).float() for z, d in (ly.recorded() for ly in layers)]


def _tile_weights(model):
    return [tile.get_weights() for tile in model.tiles()]


# ---------------------------------------------------------------------------------------------
# The floating-point twin is torch's LSTM
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_fp_twin_equals_torch_lstm_logits_state_and_gradients(cell):
    V, H, L, T, B = 11, 8, 2, 7, 3
    model = CharLSTM(V, H, L, IDEAL, seed=3)
    _set_cell(model, cell)
    lstm, lin = _torch_twin(model)
    inputs, targets = _batch(V, T, B)
    state = _random_state(L, B, H)

    out, (hT, cT) = lstm(F.one_hot(inputs, V).float(), state)
    logits = lin(out)
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))  # mean over T*B characters
    loss.backward()

    ours, (h, c) = model.logits(inputs, state, train=False)
    torch.testing.assert_close(ours, logits.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(h, hT.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(c, cT.detach(), rtol=0, atol=1e-6)

    our_loss, _ = model.forward_backward(inputs, targets, state)
    assert our_loss == pytest.approx(loss.item(), rel=1e-6)
    for ours_g, ref_g in zip(_tile_grads(model), _torch_grads(lstm, lin), strict=True):
        assert ours_g.shape == ref_g.shape
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-4, atol=1e-6)
    # The output layer's pairs are in the order time steps, then batch rows: row k = t*B + b.
    z, d = model.decoder.recorded()
    torch.testing.assert_close(z[:, :H], out.detach().reshape(T * B, H), rtol=0, atol=1e-6)
    assert torch.all(z[:, H] == 1.0) and d.shape == (T * B, V)


def test_ideal_model_trains_exactly_like_torch_sgd():
    V, H, L, T, B, lr = 9, 12, 2, 10, 2, 0.7
    model = CharLSTM(V, H, L, IDEAL, seed=4)
    lstm, lin = _torch_twin(model)
    params = [p for p in [*lstm.parameters(), *lin.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    state, ref_state = model.init_state(B), model.init_state(B)
    ours, ref = [], []
    for step in range(6):
        inputs, targets = _batch(V, T, B, seed=step % 2)  # two batches, alternating
        loss, state = model.train_step(inputs, targets, state, lr)
        ours.append(loss)
        out, ref_state = lstm(F.one_hot(inputs, V).float(), ref_state)
        ref_loss = F.cross_entropy(lin(out).view(-1, V), targets.view(-1))
        opt.zero_grad()
        ref_loss.backward()
        opt.step()
        ref_state = tuple(s.detach() for s in ref_state)
        ref.append(ref_loss.item())
    assert ours == pytest.approx(ref, rel=1e-5)
    assert ours[-2] < ours[0] and ours[-1] < ours[1]
    twin_after = _torch_twin(model)
    for a, b in zip(twin_after[0].parameters(), lstm.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-5)


def test_gradients_reaching_the_tiles_match_finite_differences():
    """Directional derivatives of the mean loss along random directions inside each block of
    each tile (input, recurrent and bias columns; output weights and bias), by central
    differences in float32. Error budget with eps = 0.03: truncation ~ eps^2 |L'''| / 6 ~ 1e-4
    |L'''|, rounding ~ 1e-7 |L| / eps ~ 1e-5 (|L| ~ 1.6); both measured below 1e-4 of |grad|,
    so a tolerance of 2e-3 |grad| (relative to the block's gradient norm) leaves a factor 20
    while a wrong gate derivative (an O(1) relative error) fails it."""
    V, H, L, T, B, eps = 5, 4, 2, 6, 2, 0.03
    model = CharLSTM(V, H, L, IDEAL, seed=1)
    inputs, targets = _batch(V, T, B, seed=5)
    state = _random_state(L, B, H, seed=6)
    model.forward_backward(inputs, targets, state)
    grads = _tile_grads(model)

    def loss():
        loss_sum, n, _ = model.evaluate(inputs, targets, state)
        return loss_sum / n

    blocks = [(0, V), (V, V + H), (V + H, V + H + 1)], [(H, H + H), (H + H, H + H + 1)]
    tile_blocks = [blocks[0], blocks[1], [(0, H), (H, H + 1)]]
    gen = torch.Generator().manual_seed(7)
    for tile, grad, cols in zip(model.tiles(), grads, tile_blocks, strict=True):
        w0 = tile.get_weights()
        for a, b in cols:
            v = torch.zeros_like(w0)
            v[:, a:b] = torch.randn(w0.shape[0], b - a, generator=gen)
            v /= v.norm()
            tile.set_weights(w0 + eps * v)
            up = loss()
            tile.set_weights(w0 - eps * v)
            down = loss()
            tile.set_weights(w0)
            fd = (up - down) / (2 * eps)
            analytic = float((grad * v).sum())
            scale = float(grad[:, a:b].norm())
            assert scale > 1e-4
            assert abs(fd - analytic) < 2e-3 * scale, (tile, (a, b), fd, analytic)


# ---------------------------------------------------------------------------------------------
# The analog model learns
# ---------------------------------------------------------------------------------------------


def test_rpu_baseline_learns_a_repetitive_text():
    """12 epochs over 'hello world, hello rpu. ' x 20 (12 symbols), batch 1, seq 24, lr 3.

    A model without context cannot beat the unigram entropy H1 (2.3 nats) of the text; the FP
    twin reaches ~0.02 nats, the RPU model 0.36-0.62 over seeds 0-2 (~0.6 s each). We require
    every seed to end below H1 / 2 (1.15 nats) from a start near ln 12 = 2.5: a margin of about
    twice the worst seed's distance, and far from what a context-free model could do.
    """
    text = b"hello world, hello rpu. " * 20
    symbols = sorted(set(text))
    ids = torch.tensor([symbols.index(c) for c in text])
    counts = torch.bincount(ids).double()
    p = counts / counts.sum()
    unigram_entropy = float(-(p * p.log()).sum())
    V, T = len(symbols), 24
    inputs, targets = ids[:-1].view(-1, 1), ids[1:].view(-1, 1)
    for seed in (0, 1, 2):
        model = CharLSTM(V, 16, 1, BASELINE, seed=seed)
        start, n, _ = model.evaluate(inputs, targets, model.init_state(1))
        state = model.init_state(1)
        for _ in range(12):
            for k in range(0, len(ids) - T - 1, T):
                seq = ids[k : k + T + 1].view(-1, 1)
                _, state = model.train_step(seq[:-1], seq[1:], state, lr=3.0)
        end, _, _ = model.evaluate(inputs, targets, model.init_state(1))
        assert start / n > 2.2
        assert end / n < unigram_entropy / 2, (seed, start / n, end / n)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def test_dropout_acts_between_layers_and_before_the_output_only():
    """Against a torch reference given the same masks: layer outputs going up are masked,
    the recurrent path h_{t-1} -> h_t is not; the gradients match too."""
    V, H, L, T, B, p = 7, 6, 2, 8, 2, 0.4
    model = CharLSTM(V, H, L, IDEAL, seed=2, dropout=p)
    inputs, targets = _batch(V, T, B, seed=3)
    state = _random_state(L, B, H, seed=4)
    loss, _ = model.forward_backward(inputs, targets, state)
    masks = model.lstm.masks
    assert len(masks) == L and all(m.shape == (T, B, H) for m in masks)
    scale = torch.tensor(1.0 / (1.0 - p))  # float32, as the masks
    assert all(torch.all((m == 0) | (m == scale)) for m in masks)

    lstm, lin = _torch_twin(model)
    layers = []
    for k in range(L):
        one = torch.nn.LSTM(V if k == 0 else H, H, 1)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(one, f"{name}_l0").data = getattr(lstm, f"{name}_l{k}").data
        one.bias_hh_l0.requires_grad_(False)
        layers.append(one)
    x = F.one_hot(inputs, V).float()
    for k, one in enumerate(layers):
        out, _ = one(x, (state[0][k : k + 1], state[1][k : k + 1]))
        x = out * masks[k]
    ref = F.cross_entropy(lin(x).view(-1, V), targets.view(-1))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    ref_grads = [
        torch.cat([one.weight_ih_l0.grad, one.weight_hh_l0.grad, one.bias_ih_l0.grad[:, None]], 1)
        for one in layers
    ]
    ref_grads.append(torch.cat([lin.weight.grad, lin.bias.grad[:, None]], dim=1))
    for ours, theirs in zip(_tile_grads(model), ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_dropout_mask_rate_and_scale():
    p, shape = 0.3, (50, 4, 32)
    lstm = AnalogLSTM(5, 32, 2, IDEAL, seed=0, dropout=p, dropout_top=True)
    x = torch.zeros(shape[0], shape[1], 5)
    lstm.forward_sequence(x, lstm.init_state(shape[1]))
    n = math.prod(shape)
    for m in lstm.masks:
        dropped = float((m == 0).double().mean())
        assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors
        assert torch.all((m == 0) | (m == torch.tensor(1 / (1 - p))))


def test_evaluate_has_no_dropout_and_does_not_draw_masks():
    V, H, L, T, B = 7, 6, 2, 8, 2
    with_dropout = CharLSTM(V, H, L, IDEAL, seed=9, dropout=0.5)
    without = CharLSTM(V, H, L, IDEAL, seed=9, dropout=0.0)
    inputs, targets = _batch(V, T, B)
    state = _random_state(L, B, H)
    gen_before = with_dropout.lstm.state_dict()["dropout_generator"]
    a = with_dropout.evaluate(inputs, targets, state)
    b = without.evaluate(inputs, targets, state)
    assert a[0] == b[0] and a[1] == b[1] == T * B
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][1], b[2][1])
    assert torch.equal(with_dropout.lstm.state_dict()["dropout_generator"], gen_before)
    # ...while training does use it: the same batch gives a different loss than without dropout.
    assert with_dropout.train_step(inputs, targets, state, 0.1)[0] != pytest.approx(
        without.train_step(inputs, targets, state, 0.1)[0], abs=1e-4
    )


# ---------------------------------------------------------------------------------------------
# Determinism, initialisation, checkpoints, sampling
# ---------------------------------------------------------------------------------------------


def _run(model, steps, seed0=0, state=None, B=2):
    state = model.init_state(B) if state is None else state
    losses = []
    for s in range(steps):
        inputs, targets = _batch(model.vocab_size, 12, B, seed=seed0 + s)
        loss, state = model.train_step(inputs, targets, state, lr=1.0)
        losses.append(loss)
    return losses, state


def test_same_seed_trains_bit_identically_other_seeds_do_not():
    runs = [CharLSTM(8, 10, 2, BASELINE, seed=s, dropout=0.2) for s in (5, 5, 6)]
    results = [_run(m, 3) for m in runs]
    assert results[0][0] == results[1][0]
    assert all(torch.equal(u, v) for u, v in zip(*map(_tile_weights, runs[:2]), strict=True))
    assert results[0][0] != results[2][0]


def test_same_seed_same_initial_weights_for_every_config():
    ideal, rpu = CharLSTM(20, 16, 2, IDEAL, seed=11), CharLSTM(20, 16, 2, BASELINE, seed=11)
    for t_ideal, t_rpu in zip(ideal.tiles(), rpu.tiles(), strict=True):
        bounds = t_rpu.device_state()
        clipped = torch.maximum(
            torch.minimum(t_ideal.get_weights(), bounds["w_max"]), bounds["w_min"]
        )
        assert torch.equal(clipped, t_rpu.get_weights())
    w = ideal.tiles()[0].get_weights()  # U(-1/sqrt(h), 1/sqrt(h)), as torch.nn.LSTM
    bound = 1 / math.sqrt(16)
    assert w.abs().max() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert not torch.equal(w, CharLSTM(20, 16, 2, IDEAL, seed=12).tiles()[0].get_weights())


def test_state_dict_round_trip_continues_identically():
    a = CharLSTM(8, 10, 2, BASELINE, seed=1, dropout=0.3)
    _, state = _run(a, 2)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = CharLSTM(8, 10, 2, BASELINE, seed=77, dropout=0.3)
    b.load_state_dict(torch.load(buf, weights_only=True))
    la, sa = _run(a, 3, seed0=10, state=state)
    lb, sb = _run(b, 3, seed0=10, state=(state[0].clone(), state[1].clone()))
    assert la == lb
    assert torch.equal(sa[0], sb[0]) and torch.equal(sa[1], sb[1])
    assert all(torch.equal(u, v) for u, v in zip(_tile_weights(a), _tile_weights(b), strict=True))
    with pytest.raises(ValueError, match="does not match"):
        CharLSTM(8, 12, 2, BASELINE).load_state_dict(a.state_dict())


def test_sample_is_reproducible_and_in_range():
    model = CharLSTM(6, 8, 2, BASELINE, seed=0)
    draws = [model.sample([1, 2, 3], 20, 0.8, torch.Generator().manual_seed(3)) for _ in "ab"]
    assert len(draws[0]) == 20 and all(0 <= i < 6 for i in draws[0])
    ideal = CharLSTM(6, 8, 2, IDEAL, seed=0)
    greedy = [ideal.sample([1, 2, 3], 10, 0.0) for _ in "ab"]
    assert greedy[0] == greedy[1]
    assert ideal.sample(torch.tensor([4]), 5, 1.0, torch.Generator().manual_seed(1)) == (
        ideal.sample([4], 5, 1.0, torch.Generator().manual_seed(1))
    )
    with pytest.raises(ValueError):
        model.sample([], 5)
    assert isinstance(draws[1], list)


def test_layers_shapes_and_misuse():
    lin = AnalogLinear(4, 3, IDEAL, seed=0)
    assert lin.tile.get_weights().shape == (3, 5)
    y = lin.forward(torch.randn(5, 2, 4))
    assert y.shape == (5, 2, 3)
    assert lin.backward(torch.randn(5, 2, 3)).shape == (5, 2, 4)
    with pytest.raises(RuntimeError):
        lin.backward(torch.randn(5, 2, 3))  # no forward since the last backward
    layer = AnalogLSTMLayer(4, 6, IDEAL, seed=0)
    assert layer.tile.get_weights().shape == (24, 11)
    with pytest.raises(RuntimeError):
        layer.backward_sequence(torch.zeros(3, 1, 6))
    hs, (h, c) = layer.forward_sequence(torch.randn(3, 1, 4), (torch.zeros(1, 6),) * 2)
    assert hs.shape == (3, 1, 6) and torch.equal(hs[-1], h)
    assert layer.backward_sequence(torch.zeros(3, 1, 6)).shape == (3, 1, 4)
    z, d = layer.recorded()
    assert z.shape == (3, 11) and d.shape == (3, 24)
    model = CharLSTM(5, 4, 3, IDEAL)
    assert [t.get_weights().shape for t in model.tiles()] == [(16, 10), (16, 9), (16, 9), (5, 5)]


def test_compiled_cell_nonlinearities_are_accurate():
    from rpusim.layers import _sigmoid, _tanh

    xs = [-800.0, -30.0, -20.5, -3.0, -1e-3, -1e-12, 0.0, 1e-12, 1e-6, 0.5, 19.9, 20.1, 800.0]
    for x in xs:
        ref = torch.tensor(x, dtype=torch.float64)
        assert _tanh(x) == pytest.approx(float(torch.tanh(ref)), rel=1e-14, abs=1e-300)
        assert _sigmoid(x) == pytest.approx(float(torch.sigmoid(ref)), rel=1e-14, abs=1e-300)


@njit(cache=False)
def _c_library(xs, out, which):
    for i in range(xs.shape[0]):
        out[i] = math.exp(xs[i]) if which == 0 else math.expm1(xs[i])


@njit(cache=False)
def _cell_math(xs, out, which):
    for i in range(xs.shape[0]):
        out[i] = lstm_loop.exp(xs[i]) if which == 0 else lstm_loop.expm1(xs[i])


@pytest.mark.parametrize("which", [0, 1], ids=["exp", "expm1"])
def test_cell_exp_and_expm1_are_within_ulps_of_the_c_library(which):
    """The cell's own exp (within 1 ulp) and expm1 (2 ulp) against the C library's in float64,
    over 10^5 random arguments at four scales; their float32 roundings agree everywhere, and
    the special values (NaN, +-inf, beyond +-708) give what the cell needs."""
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.standard_normal(25_000) * s for s in (0.01, 1.0, 5.0, 30.0)])
    ref, got = np.empty_like(xs), np.empty_like(xs)
    _c_library(xs, ref, which)
    _cell_math(xs, got, which)
    ulps = np.abs(got - ref) / np.spacing(np.abs(ref))
    assert ulps.max() <= (1.0 if which == 0 else 2.0)
    with np.errstate(over="ignore"):  # exp(130) is inf in float32 for both
        assert np.array_equal(ref.astype(np.float32), got.astype(np.float32))
    special = np.array([np.nan, np.inf, -np.inf, 800.0, -800.0])
    _cell_math(special, got[:5], which)
    assert np.isnan(got[0]) and got[1] > 1e307 and got[3] > 1e307
    if which == 0:  # 2^-1021-ish where the C library gives 0: both a float32 0
        assert 0.0 <= got[2] < 1e-307 and 0.0 <= got[4] < 1e-307
    else:
        assert got[2] == got[4] == -1.0


# ---------------------------------------------------------------------------------------------
# Fast paths give the reference's numbers
# ---------------------------------------------------------------------------------------------


def _periphery_configs():
    """Periphery settings that take every branch of the fused loop: draws ahead of the output
    noise (and their take-back on a bound-management re-read), stochastic rounding, re-reads in
    both directions, an input side that does nothing, and the ideal periphery; split reads
    (``rpusim.periphery.split``) in both directions (baseline, no_input_side, and backward with
    stochastic rounding), forward only (bm_both_ways), none (sto_round)."""
    base = BASELINE
    return {
        "baseline": base,
        "bm_both_ways": base.override(
            {
                "forward.out_bound": 0.3,
                "backward.bound_management": "iterative",
                "backward.out_bound": 0.5,
                "backward.out_noise": 0.02,
            }
        ),
        "sto_round": base.override(
            {
                "forward.inp_sto_round": True,
                "backward.inp_sto_round": True,
                "forward.out_bound": 0.5,
                "backward.bound_management": "iterative",
            }
        ),
        "sto_round_split_backward": base.override(
            {"backward.inp_sto_round": True, "forward.out_bound": 0.5}
        ),
        "no_input_side": base.override(
            {
                "forward.noise_management": "none",
                "forward.inp_bits": None,
                "forward.inp_bound": None,
                "backward.out_noise": 0.0,
            }
        ),
        "ideal": IDEAL,
    }


def _train_run(cfg, fused, B, dropout, steps=3):
    model = CharLSTM(13, 16, 2, cfg, seed=3, dropout=dropout)
    model.torch_lstm = False  # the explicit path, also for the ideal preset
    for layer in model.lstm.layers:
        layer.fused = fused
    gen = torch.Generator().manual_seed(1)
    state, losses = model.init_state(B), []
    for _ in range(steps):
        ids = torch.randint(0, 13, (18, B), generator=gen)
        loss, state = model.train_step(ids[:-1], ids[1:], state, lr=2.0)
        losses.append(loss)
    return losses, state, model.state_dict()


def _assert_identical(a, b):
    """Equal bit for bit: tensors, numbers and nested containers (tile states hold the
    weights and the generators' states)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_identical(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_identical(u, v)
    else:
        assert a == b


@pytest.mark.parametrize("name", list(_periphery_configs()))
def test_fused_time_loop_is_bit_identical_to_the_reads_of_the_torch_reference(name, monkeypatch):
    """The fused loop (one compiled call per step, draws ahead) against the layer's loop of
    tile reads through the plain-torch periphery: the same losses, states, weights and random
    streams, at batch 1 and 3, with dropout."""
    from rpusim import lstm_loop
    from rpusim import tile as tile_module
    from rpusim.periphery import analog_mvm

    cfg = _periphery_configs()[name]
    rereads, runs = [], []
    monkeypatch.setattr(
        lstm_loop,
        "reread_saturated",
        lambda *a, _f=lstm_loop.reread_saturated: rereads.append(1) or _f(*a),
    )
    for run in ("forward_run", "backward_run"):  # the compiled runs of steps
        compiled = getattr(lstm_loop, run)
        monkeypatch.setattr(lstm_loop, run, lambda *a, _f=compiled: runs.append(1) or _f(*a))
    # The default draws ahead all reads' noise at once; 200 numbers make the runs stop for
    # draws every few reads (and after every read at batch 3).
    for B, dropout, ahead in ((1, 0.0, None), (3, 0.25, None), (1, 0.0, 200), (3, 0.0, 200)):
        with monkeypatch.context() as m:
            if ahead:
                m.setattr(lstm_loop, "NOISE_AHEAD", ahead)
            fused = _train_run(cfg, True, B, dropout)
        with monkeypatch.context() as m:
            m.setattr(tile_module, "analog_mvm", functools.partial(analog_mvm, backend="torch"))
            reference = _train_run(cfg, False, B, dropout)
        _assert_identical(fused, reference)
    if name in ("bm_both_ways", "sto_round", "sto_round_split_backward"):
        assert len(rereads) > 20, "bound management was not exercised"
    if lstm_loop.blas.sgemm_address() and name not in ("sto_round", "ideal"):
        assert runs, "the compiled runs were not exercised"


def test_output_noise_drawn_ahead_is_the_same_numbers():
    from rpusim.lstm_loop import _normal_draws_split

    assert _normal_draws_split(64) and _normal_draws_split(512)
    assert not _normal_draws_split(30) and not _normal_draws_split(8)


@pytest.mark.parametrize("layers, dropout", [(2, 0.0), (1, 0.3), (3, 0.3)])
def test_float_model_steps_through_torch_lstm_as_the_explicit_path(layers, dropout):
    """train_step of an ideal model goes through torch's fused LSTM and autograd; over several
    steps it gives the explicit path's losses, states and weights to float32 rounding (the
    sums are taken in another order), and draws the same dropout masks."""
    runs = []
    for fast in (True, False):
        model = CharLSTM(11, 12, layers, IDEAL, seed=5, dropout=dropout)
        model.torch_lstm = fast
        gen = torch.Generator().manual_seed(2)
        state, losses = _random_state(layers, 3, 12), []
        for _ in range(6):
            ids = torch.randint(0, 11, (15, 3), generator=gen)
            loss, state = model.train_step(ids[:-1], ids[1:], state, lr=1.0)
            losses.append(loss)
        runs.append((model, losses, state))
    (fast, l_fast, s_fast), (ref, l_ref, s_ref) = runs
    assert l_fast == pytest.approx(l_ref, rel=1e-5)
    assert l_ref[-1] < l_ref[0]
    for a, b in zip([*s_fast, *_tile_weights(fast)], [*s_ref, *_tile_weights(ref)], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    gen_fast, gen_ref = (m.lstm.state_dict()["dropout_generator"] for m in (fast, ref))
    assert torch.equal(gen_fast, gen_ref)
    assert all(ly.n_recorded() == 0 for ly in [*fast.lstm.layers, fast.decoder])


def test_numba_threads_capped_at_torch_threads():
    import numba

    from rpusim.model import numba_threads_capped

    before = numba.get_num_threads()
    with numba_threads_capped(1):
        assert numba.get_num_threads() == 1
    with numba_threads_capped(10_000):
        assert numba.get_num_threads() == before
    assert numba.get_num_threads() == before
