"""rpusim.nn (analog nn.Modules), rpusim.optim.AnalogSGD and the tile's torch-facing behaviour.

* ``ideal`` preset: each layer equals its torch counterpart (outputs, input gradients).
* RPU preset: the input gradient IS the tile's backward read (a twin tile of the same seed read
  directly gives the same bits); ``AnalogSGD.step()`` is ``tile.update`` with the recorded pairs.
* The shipped CharLSTM and ``AnalogLSTM`` + ``AnalogLinear`` + ``AnalogSGD`` train bit-identically.
* Checkpoints (``weights_only``), ``convert_to_analog``, weight scaling, the tile's refusals.
"""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rpusim import AnalogTile, RPUConfig
from rpusim import layers as L
from rpusim.model import CharLSTM
from rpusim.nn import (
    AnalogConv2d,
    AnalogLinear,
    AnalogLSTM,
    char_lstm_modules,
    convert_to_analog,
)
from rpusim.optim import AnalogSGD
from rpusim.tile import child_seed

IDEAL = RPUConfig.preset("ideal")
BASELINE = RPUConfig.preset("rpu_baseline")

pytestmark = pytest.mark.usefixtures("one_thread")


def _close(a, b, tol=2e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# ideal preset == torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_linear_equals_torch_linear_under_ideal(seed):
    g = _gen(seed)
    n_in, n_out = (int(v) for v in torch.randint(1, 12, (2,), generator=g))
    bias = seed % 2 == 0
    lead = tuple(int(v) for v in torch.randint(1, 4, (1 + seed % 3,), generator=g))
    torch.manual_seed(seed)
    ref = nn.Linear(n_in, n_out, bias=bias)
    ana = AnalogLinear(n_in, n_out, bias=bias, rpu_config=IDEAL)
    ana.set_weights(ref.weight.detach(), None if ref.bias is None else ref.bias.detach())
    w, b = ana.get_weights()
    assert torch.equal(w, ref.weight.detach()) and (b is None) == (not bias)
    x = torch.randn(*lead, n_in, generator=g)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yr = ana(xa), ref(xr)
    _close(ya, yr)
    gy = torch.randn(yr.shape, generator=g)
    ya.backward(gy)
    yr.backward(gy)
    _close(xa.grad, xr.grad)
    # the recorded pairs give torch's weight gradient
    z, d = ana.recorded()
    grad = d.t() @ z
    _close(grad[:, :n_in], ref.weight.grad)
    if bias:
        _close(grad[:, n_in], ref.bias.grad)


@pytest.mark.parametrize(
    "cin, cout, k, stride, padding, bias",
    [(1, 3, 3, 1, 0, True), (2, 4, 3, 2, 1, False), (3, 2, (2, 3), (1, 2), (1, 0), True)],
)
def test_conv2d_equals_torch_conv2d_under_ideal(cin, cout, k, stride, padding, bias):
    torch.manual_seed(1)
    ref = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias)
    ana = AnalogConv2d(cin, cout, k, stride=stride, padding=padding, bias=bias, rpu_config=IDEAL)
    ana.set_weights(ref.weight.detach(), None if ref.bias is None else ref.bias.detach())
    assert torch.equal(ana.get_weights()[0], ref.weight.detach())
    x = torch.randn(2, cin, 7, 6)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yr = ana(xa), ref(xr)
    assert ya.shape == yr.shape
    _close(ya, yr)
    gy = torch.randn(yr.shape)
    ya.backward(gy)
    yr.backward(gy)
    _close(xa.grad, xr.grad)
    # one read and one pair per output position
    assert ana.n_recorded() == yr.shape[0] * yr.shape[2] * yr.shape[3]
    z, d = ana.recorded()
    grad = d.t() @ z
    _close(grad[:, : ref.weight[0].numel()].view_as(ref.weight), ref.weight.grad, tol=1e-4)


@pytest.mark.parametrize(
    "layers, bias, batch_first, unbatched",
    [(1, True, False, False), (2, False, True, False), (2, True, False, True)],
)
def test_lstm_equals_torch_lstm_under_ideal(layers, bias, batch_first, unbatched):
    torch.manual_seed(2)
    n_in, h, T, B = 5, 6, 4, 3
    ref = nn.LSTM(n_in, h, layers, bias=bias, batch_first=batch_first)
    ana = AnalogLSTM(n_in, h, layers, bias=bias, batch_first=batch_first, rpu_config=IDEAL)
    ana.set_weights(dict(ref.named_parameters()))
    shape = (T, n_in) if unbatched else (B, T, n_in) if batch_first else (T, B, n_in)
    sshape = (layers, h) if unbatched else (layers, B, h)
    x, h0, c0 = torch.randn(shape), torch.randn(sshape), torch.randn(sshape)
    ins_a = [v.clone().requires_grad_() for v in (x, h0, c0)]
    ins_r = [v.clone().requires_grad_() for v in (x, h0, c0)]
    out_a, (ha, ca) = ana(ins_a[0], (ins_a[1], ins_a[2]))
    out_r, (hr, cr) = ref(ins_r[0], (ins_r[1], ins_r[2]))
    for a, r in ((out_a, out_r), (ha, hr), (ca, cr)):
        assert a.shape == r.shape
        _close(a, r)
    gs = [torch.randn(v.shape) for v in (out_r, hr, cr)]
    torch.autograd.backward([out_a, ha, ca], gs)
    torch.autograd.backward([out_r, hr, cr], gs)
    for a, r in zip(ins_a, ins_r, strict=True):
        _close(a.grad, r.grad)
    ref_w = {k: v.detach() for k, v in ref.named_parameters()}
    got = ana.get_weights()
    for k in range(layers):
        assert torch.equal(got[f"weight_hh_l{k}"], ref_w[f"weight_hh_l{k}"])
        if bias:
            _close(got[f"bias_ih_l{k}"], ref_w[f"bias_ih_l{k}"] + ref_w[f"bias_hh_l{k}"])


# ---------------------------------------------------------------------------------------------
# RPU preset: the input gradient is the backward read; the step is tile.update
# ---------------------------------------------------------------------------------------------


def test_input_gradient_is_the_tiles_backward_read():
    lin = AnalogLinear(6, 4, rpu_config=BASELINE, seed=3)
    twin = AnalogTile(4, 7, BASELINE, seed=child_seed(3, L.STREAM_TILE))
    twin.set_weights(L.init_uniform(4, 7, 1 / 6**0.5, 3))
    assert torch.equal(twin.get_weights(), lin.tile.get_weights())
    x = torch.randn(5, 6, requires_grad=True)
    y = lin(x)
    z = torch.cat([x.detach(), torch.ones(5, 1)], 1)
    assert torch.equal(y, twin.forward(z))
    d = torch.randn(5, 4)
    y.backward(d)
    assert torch.equal(x.grad, twin.backward(d)[:, :6])
    assert not torch.equal(x.grad, d @ lin.get_weights()[0])  # not a digital transpose


def test_lstm_input_gradient_is_the_layers_backward_reads():
    ana = AnalogLSTM(5, 8, 2, rpu_config=BASELINE, seed=4)
    ref = L.AnalogLSTM(5, 8, 2, BASELINE, seed=4)
    x = torch.randn(6, 2, 5)
    xa = x.clone().requires_grad_()
    out, _ = ana(xa)
    hs, _ = ref.forward_sequence(x, ref.init_state(2))
    assert torch.equal(out, hs)
    g = torch.randn(6, 2, 8)
    out.backward(g)
    assert torch.equal(xa.grad, ref.backward_sequence(g))
    for k, layer in enumerate(ref.layers):
        zr, dr = layer.recorded()
        za, da = ana.recorded(k)
        assert torch.equal(za, zr) and torch.equal(da, dr)


def test_analog_sgd_step_is_the_tile_update_with_the_recorded_pairs():
    torch.manual_seed(0)
    model = nn.Sequential(
        AnalogLinear(6, 5, rpu_config=BASELINE, seed=1),
        nn.Tanh(),
        nn.Linear(5, 3),  # a digital layer: plain SGD
    )
    twin = copy.deepcopy(model[0].tile)
    digital = [p.detach().clone() for p in model[2].parameters()]
    opt = AnalogSGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for step in range(2):
        x = torch.randn(4, 6)
        opt.zero_grad()
        # two forward calls before one backward: pairs in forward-call order
        loss = model(x).square().sum() + model(x[:2]).sum()
        loss.backward()
        zs, ds = model[0].recorded()
        assert zs.shape[0] == 6 and torch.equal(zs[:4, :6], x)
        lr = opt.param_groups[0]["lr"]
        assert lr == 0.5 * 0.5**step
        grads = [p.grad.clone() for p in model[2].parameters()]
        opt.step()
        sched.step()
        twin.update(zs, ds, lr)
        assert torch.equal(model[0].tile.get_weights(), twin.get_weights())
        assert model[0].n_recorded() == 0
        for p, p0, g in zip(model[2].parameters(), digital, grads, strict=True):
            assert torch.equal(p.detach(), p0 - lr * g)
            p0.copy_(p.detach())


def test_zero_grad_clears_recorded_pairs_and_eval_no_grad_records_nothing():
    lin = AnalogLinear(3, 2, rpu_config=BASELINE, seed=0)
    opt = AnalogSGD(lin.parameters(), lr=0.1)
    lin(torch.randn(4, 3)).sum().backward()
    assert lin.n_recorded() == 4
    opt.zero_grad()
    assert lin.n_recorded() == 0
    with torch.no_grad():
        lin.eval()(torch.randn(4, 3))
    assert lin.n_recorded() == 0 and not lin.training


# ---------------------------------------------------------------------------------------------
# CharLSTM == AnalogLSTM + AnalogLinear + AnalogSGD, bit for bit
# ---------------------------------------------------------------------------------------------


class _MeanCrossEntropy(torch.autograd.Function):
    """CharLSTM's loss with its own arithmetic for the gradient, ``(softmax - onehot) / n``
    (autograd's cross-entropy rounds ``/ n`` differently)."""

    @staticmethod
    def forward(ctx, logits, targets):
        n = logits.shape[0]
        logp = torch.log_softmax(logits, dim=1)
        tgt = targets.reshape(n, 1)
        ctx.save_for_backward(logp, tgt)
        return -logp.gather(1, tgt).sum() / n

    @staticmethod
    def backward(ctx, grad_out):
        logp, tgt = ctx.saved_tensors
        n = logp.shape[0]
        grad = logp.exp()
        grad.scatter_add_(1, tgt, torch.full((n, 1), -1.0))
        return grad.div_(n), None


def test_char_lstm_and_nn_modules_train_bit_identically():
    V, H, layers, T, B, lr = 20, 64, 2, 50, 1, 1.0
    seq = torch.randint(0, V, (4 * T + 1, B), generator=_gen(7))
    char = CharLSTM(V, H, layers, BASELINE, seed=5)
    lstm, head = char_lstm_modules(V, H, layers, BASELINE, seed=5)
    opt = AnalogSGD([*lstm.parameters(), *head.parameters()], lr=lr)
    tiles_nn = [*lstm.analog_tiles(), head.tile]
    for a, b in zip(char.tiles(), tiles_nn, strict=True):
        assert torch.equal(a.get_weights(), b.get_weights())
    state_c = char.init_state(B)
    state_n = None
    for k in range(4):
        inp, tgt = seq[k * T : (k + 1) * T], seq[k * T + 1 : (k + 1) * T + 1]
        loss_c, state_c = char.forward_backward(inp, tgt, state_c)
        char.apply_update(lr)
        x = F.one_hot(inp, V).float()
        opt.zero_grad()
        out, (h, c) = lstm(x, state_n)
        loss_n = _MeanCrossEntropy.apply(head(out).view(T * B, V), tgt)
        loss_n.backward()
        opt.step()
        state_n = (h.detach(), c.detach())
        assert loss_c == float(loss_n.detach())
        for a, b in zip(char.tiles(), tiles_nn, strict=True):
            assert torch.equal(a.get_weights(), b.get_weights())
    assert torch.equal(state_c[0], state_n[0]) and torch.equal(state_c[1], state_n[1])


# ---------------------------------------------------------------------------------------------
# Checkpoints, conversion, devices, repr
# ---------------------------------------------------------------------------------------------


def _cnn(cfg, seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        AnalogConv2d(1, 3, 3, padding=1, rpu_config=cfg),
        nn.ReLU(),
        nn.Flatten(),
        AnalogLinear(3 * 5 * 5, 4, rpu_config=cfg),
    )


def _train(model, opt, steps, seed):
    g = _gen(seed)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(3, 1, 5, 5, generator=g), torch.randint(0, 4, (3,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_state_dict_round_trip_resumes_bit_identically():
    a = _cnn(BASELINE, 0)
    _train(a, AnalogSGD(a.parameters(), lr=0.1), 2, seed=1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = _cnn(BASELINE, 9)  # other seeds: everything comes from the checkpoint
    b.load_state_dict(state)
    la = _train(a, AnalogSGD(a.parameters(), lr=0.1), 2, seed=2)
    lb = _train(b, AnalogSGD(b.parameters(), lr=0.1), 2, seed=2)
    assert la == lb
    assert torch.equal(a[0].get_weights()[0], b[0].get_weights()[0])
    assert torch.equal(a[3].get_weights()[0], b[3].get_weights()[0])


def test_lstm_state_dict_round_trip_with_dropout():
    def run(m, seed):
        opt = AnalogSGD(m.parameters(), lr=0.5)
        x = torch.randn(5, 2, 3, generator=_gen(seed))
        opt.zero_grad()
        out, _ = m(x)
        out.sum().backward()
        opt.step()
        return out.detach()

    a = AnalogLSTM(3, 4, 2, dropout=0.3, rpu_config=BASELINE, seed=1)
    run(a, 0)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = AnalogLSTM(3, 4, 2, dropout=0.3, rpu_config=BASELINE, seed=2)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(run(a, 1), run(b, 1))
    assert all(
        torch.equal(u, v)
        for u, v in zip(a.get_weights().values(), b.get_weights().values(), strict=True)
    )


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.rnn = nn.LSTM(2, 5, batch_first=True)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x):
        f = self.conv(x)  # (B, 2, 3, 3)
        seq = f.flatten(2).transpose(1, 2)  # (B, 9, 2)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1])


def test_convert_to_analog_preserves_outputs_under_ideal_and_copies():
    torch.manual_seed(3)
    net = _Net()
    ana = convert_to_analog(net, IDEAL, seed=0)
    assert isinstance(ana.conv, AnalogConv2d) and isinstance(ana.rnn, AnalogLSTM)
    assert isinstance(ana.head[1], AnalogLinear) and isinstance(net.head[1], nn.Linear)
    x = torch.randn(4, 1, 6, 6)
    _close(ana(x), net(x))
    # it trains, and the original is untouched
    before = net.head[1].weight.detach().clone()
    _train_steps = AnalogSGD(ana.parameters(), lr=0.1)
    F.cross_entropy(ana(x), torch.tensor([0, 1, 2, 0])).backward()
    _train_steps.step()
    assert torch.equal(net.head[1].weight, before)
    assert not torch.equal(ana.head[1].get_weights()[0], before)


def test_modules_to_device_train_eval_repr_and_deepcopy():
    m = _cnn(BASELINE, 0)
    assert m.to("cpu") is m and m.eval().training is False
    text = repr(m)
    assert "AnalogConv2d(1, 3, kernel_size=(3, 3)" in text and "AnalogLinear(in_features=75" in text
    c = copy.deepcopy(m).train()
    opt = AnalogSGD(c.parameters(), lr=0.1)
    before = c[3].get_weights()[0]
    F.cross_entropy(c(torch.randn(2, 1, 5, 5)), torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(c[3].get_weights()[0], before)
    assert torch.equal(m[3].get_weights()[0], before)  # the copy has its own tiles


# ---------------------------------------------------------------------------------------------
# The tile: refusals, leading dimensions, float64; weight scaling
# ---------------------------------------------------------------------------------------------


def test_tile_refuses_inputs_that_require_grad():
    tile = AnalogTile(3, 4, BASELINE, seed=0)
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="rpusim.nn"):
        tile.forward(x)
    with pytest.raises(RuntimeError, match="rpusim.nn"):
        tile.backward(torch.randn(2, 3, requires_grad=True))
    with torch.no_grad():
        assert tile.forward(x).shape == (2, 3)


def test_tile_keeps_leading_dimensions_and_warns_once_on_float64():
    a, b = AnalogTile(3, 4, BASELINE, seed=0), AnalogTile(3, 4, BASELINE, seed=0)
    x = torch.randn(2, 5, 4)
    y = a.forward(x)
    assert y.shape == (2, 5, 3) and torch.equal(y, b.forward(x.view(10, 4)).view(2, 5, 3))
    assert a.backward(torch.randn(7, 1, 3)).shape == (7, 1, 4)
    assert a.forward(torch.randn(4)).shape == (3,)
    with pytest.warns(UserWarning, match="float64"):
        a.forward(x.double())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.forward(x.double())  # once per tile


def _bounded(scaling):
    return IDEAL.override(
        {
            "device.w_max": 1.0,
            "device.w_min": -1.0,
            "mapping.weight_scaling": scaling,
            "mapping.weight_scaling_fraction": 0.5,
        }
    )


@pytest.mark.parametrize("scaling", ["tile", "column"])
def test_weight_scaling_maps_onto_the_device_range_and_keeps_the_function(scaling):
    torch.manual_seed(0)
    ref = nn.Linear(6, 4)
    with torch.no_grad():
        ref.weight.mul_(torch.tensor([[4.0], [1.0], [0.25], [2.0]]))
    plain, scaled = AnalogLinear(6, 4, rpu_config=_bounded("none")), None
    scaled = AnalogLinear(6, 4, rpu_config=_bounded(scaling))
    with pytest.warns(UserWarning, match="clipped"):
        plain.set_weights(ref.weight.detach(), ref.bias.detach())
    scaled.set_weights(ref.weight.detach(), ref.bias.detach())
    array = scaled.tile._w.abs()
    peaks = array.amax() if scaling == "tile" else array.amax(dim=1)
    _close(peaks, torch.full_like(peaks, 0.5))
    _close(scaled.get_weights()[0], ref.weight.detach())
    # the trained function is unchanged: outputs, input gradients and float updates
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05)
    opt_s = AnalogSGD(scaled.parameters(), lr=0.05)
    for step in range(3):
        x = torch.randn(5, 6, generator=_gen(step))
        xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        ys, yr = scaled(xs), ref(xr)
        _close(ys, yr, tol=1e-4)
        for o, y in ((opt_s, ys), (opt_r, yr)):
            o.zero_grad()
            y.square().sum().backward()
            o.step()
        _close(xs.grad, xr.grad, tol=1e-4)
    _close(scaled.get_weights()[0], ref.weight.detach(), tol=1e-4)
    # the scale is part of the checkpoint
    other = AnalogLinear(6, 4, rpu_config=_bounded(scaling))
    other.load_state_dict(scaled.state_dict())
    assert torch.equal(other.tile.out_scale, scaled.tile.out_scale)


def test_weight_scaling_in_the_lstm_keeps_the_function():
    torch.manual_seed(1)
    ref = nn.LSTM(3, 4)
    ana = AnalogLSTM(3, 4, rpu_config=_bounded("column"))
    ana.set_weights(dict(ref.named_parameters()))
    assert ana.lstm.layers[0].tile.out_scale is not None and not ana.lstm.layers[0]._fused()
    x = torch.randn(5, 2, 3)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ya, _), (yr, _) = ana(xa), ref(xr)
    _close(ya, yr)
    ya.sum().backward()
    yr.sum().backward()
    _close(xa.grad, xr.grad)


def test_weight_scaling_none_leaves_the_char_lstm_unchanged():
    a = CharLSTM(10, 8, 1, BASELINE, seed=0)
    b = CharLSTM(10, 8, 1, BASELINE.override({"mapping.weight_scaling": "none"}), seed=0)
    inp = torch.randint(0, 10, (5, 1), generator=_gen(0))
    la, _ = a.train_step(inp, inp, a.init_state(1), 0.5)
    lb, _ = b.train_step(inp, inp, b.init_state(1), 0.5)
    assert la == lb and all(t.out_scale is None for t in a.tiles())
