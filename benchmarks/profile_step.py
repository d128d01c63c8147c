"""Where one RPU training step spends its time, and what a batched ensemble could gain.

For the RPU baseline (2 layers, sequences of 100) at one batch size it measures, in one run, on
one torch and one numba thread, each as the median of ``--repeats`` timings:

* ``step``: one whole ``train_step`` (forward, backward, pulsed update of every tile);
* ``torch``: torch's own ``nn.LSTM`` + ``Linear`` + SGD step of the same shape (the floor);
* ``update``: each tile's pulsed update with the pairs of a real step (``apply_update``);
* ``reads' matmuls``: the matrix products the step's reads do (the split reads of
  ``docs/model.md`` section 7.1: per layer and time step one forward product of ``[h; 1]`` and
  one backward product for ``dh``, per layer and sequence the input part and ``dx`` products;
  the output layer's two), replayed alone with the same shapes;
* ``rest``: the remainder, the periphery and cell kernels, random draws and the Python loop.

The ensemble bound. A batched ensemble (R runs of one shape stepped together, one ``bmm`` per
read instead of R products) can only save what is paid once per call: Python, dispatch, call
set-up. Each replica still reads its own weights twice per time step and applies its own pulsed
update (different devices, different pairs). So per replica an ensemble step costs at least the
reads' products done as ``bmm`` over R replicas (divided by R) plus one run's update, and its
speed-up over R separate runs is at most ``step / (bmm / R + update)``. That is an upper bound:
the periphery and cell kernels' arithmetic, also per replica, is left out of it.

    PYTHONPATH=src python benchmarks/profile_step.py                  # 2x64, 2x128, 2x256, batch 1
    PYTHONPATH=src python benchmarks/profile_step.py --hidden 128 --batch 32 --ensemble 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import torch

from rpusim import ordered
from rpusim.config import RPUConfig
from rpusim.model import CharLSTM

VOCAB, SEQ = 87, 100


#: How time is measured (``--clock``): wall time, or this thread's CPU time (on a machine that
#: other jobs share, the time spent waiting for a core is not counted: the cost of the step).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up (compiles, fills caches)
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


@numba.njit(cache=True, nogil=True)
def _ordered_steps(z, w_hb_t, a, da, w_h, dh, steps):
    """``steps`` time steps' ordered products (forward ``[h; 1]``, backward ``d``)."""
    for _ in range(steps):
        ordered.ordered_rows(z, w_hb_t, a)
        ordered.ordered_rows(da, w_h, dh)


def profile(hidden: int, batch: int, replicas: int, repeats: int) -> dict[str, float]:
    """Seconds per training step of each part (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, VOCAB, (SEQ, batch), generator=gen)
    targets = torch.randint(0, VOCAB, (SEQ, batch), generator=gen)
    model = CharLSTM(VOCAB, hidden, 2, RPUConfig.preset("rpu_baseline"), seed=0)
    state = model.init_state(batch)
    for _ in range(10):  # away from the initial weights: realistic pulse counts
        model.train_step(inputs, targets, state, 1.0)
    out = {"step": _median_s(lambda: model.train_step(inputs, targets, state, 1.0), repeats)}

    lstm, linear = torch.nn.LSTM(VOCAB, hidden, 2), torch.nn.Linear(hidden, VOCAB)
    sgd = torch.optim.SGD([*lstm.parameters(), *linear.parameters()], lr=1.0)
    x = torch.nn.functional.one_hot(inputs, VOCAB).float()

    def torch_step() -> None:
        sgd.zero_grad()
        logits = linear(lstm(x)[0])
        torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1)).backward()
        sgd.step()

    out["torch"] = _median_s(torch_step, repeats)

    layers = [*model.lstm.layers, model.decoder]

    seconds = []  # each tile's update with the pairs of one real step (its pass not timed)
    for _ in range(repeats):
        model.forward_backward(inputs, targets, state)
        t0 = clock()
        for layer in layers:
            layer.apply_update(1.0)
        seconds.append(clock() - t0)
    out["update"] = statistics.median(seconds)

    shapes = [tuple(layer.tile.get_weights().shape) for layer in model.lstm.layers]

    def matmuls(r: int):
        """The reads' products of one step for ``r`` replicas at once (buffers made here), as
        the split reads do them (``docs/model.md`` section 7.1): per LSTM layer and time step
        forward ``q([h; 1]) [W_h, w_bias]^T``, backward ``q(d) W_h``, both on contiguous blocks;
        per layer and sequence the input part ahead and the ``dx`` outputs after the loop (the
        first layer's one-hot input part is a column gather, and its ``dx`` is not needed);
        the output layer reads all T*B rows at once, both ways. A step's product of at most
        ``rpusim.ordered.ROWS`` rows is the ordered product the step itself runs (one
        replica), else ``bmm``."""
        bufs = []
        for k, (n_out, n_in) in enumerate(shapes):
            h = n_out // 4
            n = n_in - h - 1
            w_hb_t, w_h = torch.randn(r, h + 1, n_out), torch.randn(r, n_out, h)
            w_x = torch.randn(r, n_out, n) if k > 0 else None
            z, da = torch.randn(r, batch, h + 1), torch.randn(r, batch, n_out)
            xs, das = torch.randn(r, SEQ * batch, n), torch.randn(r, SEQ * batch, n_out)
            bufs.append((w_hb_t, w_h, w_x, z, da, xs, das))
        wd = torch.randn(r, VOCAB, hidden + 1)
        hs, dy = torch.randn(r, SEQ * batch, hidden + 1), torch.randn(r, SEQ * batch, VOCAB)

        in_order = r == 1 and batch <= ordered.ROWS

        def run() -> None:
            for w_hb_t, w_h, w_x, z, da, xs, das in bufs:
                a, dh = torch.empty_like(da), torch.empty(da.shape[0], batch, w_h.shape[2])
                if w_x is not None:
                    torch.bmm(xs, w_x.transpose(1, 2))
                if in_order:  # from compiled code, as the fused time loops call it
                    arrays = (z[0], w_hb_t[0], a[0], da[0], w_h[0], dh[0])
                    _ordered_steps(*(t.numpy() for t in arrays), SEQ)
                for _ in range(0 if in_order else SEQ):
                    torch.bmm(z, w_hb_t, out=a)
                    torch.bmm(da, w_h, out=dh)
                if w_x is not None:
                    torch.bmm(das, w_x)
            torch.bmm(hs, wd.transpose(1, 2))
            torch.bmm(dy, wd)

        return run

    out["matmuls"] = _median_s(matmuls(1), repeats)
    out["rest"] = out["step"] - out["update"] - out["matmuls"]
    bmm = _median_s(matmuls(replicas), max(3, repeats // 4))
    out["bmm_per_replica"] = bmm / replicas
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ensemble", type=int, default=16, help="replicas R of the bound")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall or cpu")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.ensemble < 1 or args.batch < 1:
        parser.error("--ensemble and --batch must be >= 1")
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    print(
        f"RPU baseline, 2 layers, batch {args.batch}, sequences of {SEQ}; ms per training step "
        f"(1 torch + 1 numba thread, {args.clock} time); ensemble bound for R = {args.ensemble}"
    )
    head = ["shape", "torch", "rpusim RPU", "update", "reads' matmuls", "rest"]
    head += ["R-ensemble per replica >=", "speed-up <="]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for hidden in args.hidden:
        p = profile(hidden, args.batch, args.ensemble, args.repeats)
        ms = {k: 1e3 * v for k, v in p.items()}
        floor = ms["bmm_per_replica"] + ms["update"]
        print(
            f"| 2x{hidden} | {ms['torch']:.2f} | {ms['step']:.2f} ({p['torch'] / p['step']:.2f}x) "
            f"| {ms['update']:.2f} | {ms['matmuls']:.2f} | {ms['rest']:.2f} "
            f"| {floor:.2f} (bmm {ms['bmm_per_replica']:.2f} + update) "
            f"| {ms['step'] / floor:.2f}x |"
        )


if __name__ == "__main__":
    main()
