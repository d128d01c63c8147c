"""Corpora, byte vocabulary, train/valid/test splits and BPTT batches for character-level LMs.

The corpora of Karpathy, Johnson & Fei-Fei (2015) ship inside the package, xz-compressed
(``src/rpusim/corpora``, see its README for origins and licenses):

* ``warpeace``: *War and Peace*, Karpathy's ``warpeace_input.txt`` byte for byte (BOM and CRLF
  kept), 3,258,246 bytes, 87 distinct bytes: the paper's WP vocabulary.
* ``linux``: a stand-in of the same recipe and size for Karpathy's ``linux_input.txt`` (Linux 6.1
  ``kernel/*.c, *.h`` shuffled and concatenated), 6,206,952 bytes. It is NOT the original file,
  so results are not directly comparable with published LK numbers.

Characters are bytes, as in Lua char-rnn: the vocabulary is the sorted set of byte values that
occur in the whole corpus. A typical pipeline::

    data = load_corpus("warpeace")            # bytes, verified against its sha256
    vocab = Vocab.from_data(data)             # 87 symbols, from the WHOLE corpus
    train, valid, test = split(vocab.encode(slice_corpus(data, max_bytes)))
    stream = BatchStream(train, seq_len=100, batch_size=32)
    for inputs, targets in stream:            # (seq_len, batch) each, time-major
        ...                                   # carry the hidden state to the next batch

Every refusal is a :class:`DataError` with one line that names the config key and the fix.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import lzma
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch


class DataError(ValueError):
    """A corpus, split or batch layout was refused. The message is one line: ``key: why; fix``."""


# ---------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedCorpus:
    """A corpus shipped in ``rpusim/corpora``: the xz file and its uncompressed size and sha256."""

    file: str
    size: int
    sha256: str
    distinct_bytes: int
    description: str


CORPORA: dict[str, ShippedCorpus] = {
    "warpeace": ShippedCorpus(
        file="warpeace.txt.xz",
        size=3_258_246,
        sha256="fb66ba999dafe24017cdd59e04c56d385a9c8466993d374fd4c6f08b2142985e",
        distinct_bytes=87,
        description="War and Peace (Maude translation, Project Gutenberg #2600), Karpathy's copy",
    ),
    "linux": ShippedCorpus(
        file="linux.txt.xz",
        size=6_206_952,
        sha256="387961eb623f9718810c49e0dae1b9141b93639acb560c463a0b29d38e011ed5",
        distinct_bytes=106,
        description="Linux 6.1 kernel/*.c,*.h shuffled; a stand-in, not Karpathy's linux_input.txt",
    ),
}


def load_corpus(name_or_path: str | os.PathLike[str]) -> bytes:
    """The raw bytes of a shipped corpus (``"warpeace"``, ``"linux"``) or of any file.

    A string equal to a shipped name selects the shipped corpus (write ``./linux`` for a file of
    that name). Shipped corpora are decompressed once per process and checked against their
    sha256. Files are read as raw bytes, so UTF-8 text and binary data both work.
    """
    if isinstance(name_or_path, str) and name_or_path in CORPORA:
        return _load_shipped(name_or_path)
    path = Path(name_or_path)
    shipped = ", ".join(CORPORA)
    if not path.exists():
        text = str(name_or_path)
        if isinstance(name_or_path, str) and not _looks_like_path(text):
            close = difflib.get_close_matches(text, list(CORPORA), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"data.corpus: {text!r} is neither a shipped corpus ({shipped}) "
                f"nor an existing file{hint}"
            )
        raise DataError(
            f"data.corpus: no such file {text}; give an existing file or a shipped corpus "
            f"({shipped})"
        )
    if path.is_dir():
        raise DataError(f"data.corpus: {path} is a directory; give a file of text or bytes")
    # Only a regular file: a FIFO would block the read forever and /dev/zero never ends.
    if not path.is_file():
        raise DataError(
            f"data.corpus: {path} is not a regular file (a FIFO, device or socket); give a file "
            "of text or bytes"
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"data.corpus: cannot read {path} ({type(err).__name__}); check its permissions"
        ) from None
    if not data:
        raise DataError(f"data.corpus: {path} is empty; give a file with some text")
    return data


@functools.cache
def _load_shipped(name: str) -> bytes:
    corpus = CORPORA[name]
    resource = resources.files("rpusim") / "corpora" / corpus.file
    fix = "reinstall rpusim or rebuild it with scripts/pack_corpora.py"
    try:
        data = lzma.decompress(resource.read_bytes())
    except (OSError, lzma.LZMAError) as err:
        raise DataError(
            f"data.corpus: shipped corpus {name!r} ({corpus.file}) cannot be read "
            f"({type(err).__name__}); {fix}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != corpus.size or digest != corpus.sha256:
        raise DataError(
            f"data.corpus: shipped corpus {name!r} is damaged ({len(data)} bytes, sha256 "
            f"{digest[:12]}..., expected {corpus.size} bytes, {corpus.sha256[:12]}...); {fix}"
        )
    return data


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\", os.sep)) or Path(text).suffix != ""


def slice_corpus(data: bytes, max_bytes: int | None) -> bytes:
    """The first ``max_bytes`` bytes of ``data`` (all of it when ``None``), for quick demos.

    Build the :class:`Vocab` from the whole corpus *before* slicing, so that the output layer
    keeps the corpus' vocabulary size whatever the slice.
    """
    if max_bytes is None:
        return data
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise DataError(
            f"data.max_bytes: {max_bytes!r} is not allowed; give a positive number of bytes "
            "or null for the whole corpus"
        )
    return data[:max_bytes]


# ---------------------------------------------------------------------------------------------
# Byte vocabulary
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    """Byte-level vocabulary: symbol ``i`` is the byte value ``symbols[i]`` (sorted, distinct).

    Serialise with :meth:`to_list` / :meth:`from_list` (a plain list of ints, for checkpoints).
    """

    symbols: tuple[int, ...]

    def __post_init__(self) -> None:
        syms = self.symbols
        if not syms:
            raise DataError("vocab: has no symbols; build it from a non-empty corpus")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 255 for s in syms):
            raise DataError("vocab: symbols must be byte values, integers in 0..255")
        if any(a >= b for a, b in zip(syms, syms[1:], strict=False)):
            raise DataError("vocab: symbols must be distinct and sorted ascending")
        index = np.full(256, -1, dtype=np.int64)
        index[list(syms)] = np.arange(len(syms))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_table", np.array(syms, dtype=np.uint8))

    @classmethod
    def from_data(cls, data: bytes) -> Vocab:
        """The bytes that occur in ``data`` (pass the whole corpus), sorted by value."""
        counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
        return cls(tuple(int(b) for b in np.flatnonzero(counts)))

    @classmethod
    def from_list(cls, symbols: Sequence[int]) -> Vocab:
        """Inverse of :meth:`to_list`."""
        return cls(tuple(symbols))

    def to_list(self) -> list[int]:
        """The byte values in symbol order, a plain list of ints (JSON/YAML/checkpoint safe)."""
        return list(self.symbols)

    @property
    def size(self) -> int:
        """Number of symbols (the LSTM's input and output width)."""
        return len(self.symbols)

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, data: bytes) -> torch.Tensor:
        """Bytes ``(n,)`` -> symbol ids, a LongTensor ``(n,)``. Unknown bytes are refused."""
        ids = self._index[np.frombuffer(data, dtype=np.uint8)]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            pos = int(bad[0])
            raise DataError(
                f"data: byte 0x{data[pos]:02x} at offset {pos} is not in the vocabulary "
                f"({self.size} symbols); build the vocabulary from the whole corpus"
            )
        return torch.from_numpy(ids)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> bytes:
        """Symbol ids of any shape (flattened in row-major order) -> bytes."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        arr = arr.reshape(-1).astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= self.size):
            raise DataError(f"data: symbol ids must lie in 0..{self.size - 1} to decode")
        return self._table[arr].tobytes()


# ---------------------------------------------------------------------------------------------
# Splits and batches
# ---------------------------------------------------------------------------------------------

_Seq = TypeVar("_Seq", bytes, torch.Tensor)


def split(
    data: _Seq, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[_Seq, _Seq, _Seq]:
    """Contiguous train/valid/test split: ``data[:a]``, ``data[a:b]``, ``data[b:]``.

    ``a = floor(n * f_train)``, ``b = floor(n * (f_train + f_valid))``; the three parts cover
    ``data`` exactly, in order, with no shuffling (char-rnn's contiguous split: the test text is
    text the model never read, not a random sample of sentences it has half seen). Works on
    ``bytes`` and on 1-D tensors (slices of a tensor are views).
    """
    fr = tuple(fractions)
    if (
        len(fr) != 3
        or any(isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1 for f in fr)
        or abs(sum(fr) - 1.0) > 1e-6
    ):
        raise DataError(
            f"data.split: {fractions!r} is not allowed; give three non-negative fractions "
            "(train, valid, test) that sum to 1"
        )
    n = len(data)
    a = min(int(n * fr[0]), n)
    b = min(max(int(n * (fr[0] + fr[1])), a), n)
    return data[:a], data[a:b], data[b:]


class BatchStream:
    """Truncated-BPTT batches over one split: ``batch_size`` parallel streams, time-major.

    Layout: the split (``n`` symbols) is cut into ``batch_size`` contiguous streams of
    ``L = n // batch_size`` symbols; row ``b`` reads ``split[b*L:(b+1)*L]`` (the ``n mod
    batch_size`` last symbols are dropped). Sequence ``s`` of the epoch is::

        inputs  = streams[:, s*seq_len     : (s+1)*seq_len    ].T   # (seq_len, batch)
        targets = streams[:, s*seq_len + 1 : (s+1)*seq_len + 1].T   # inputs shifted by one

    so the last target of sequence ``s`` is the first input of sequence ``s + 1`` in every
    column. [Choice, as char-rnn and PyTorch's word_language_model:] consecutive sequences
    continue the same text, so a model may carry its hidden state (detached) from one sequence
    to the next within an epoch and reset it at the epoch's start. Only full sequences are
    produced: ``len(self) = (L - 1) // seq_len``, and a stream's tail shorter than a sequence is
    not read. Each epoch reads the same batches in the same order (no randomness).

    Exact resume: ``position`` is the index of the next sequence. Iterating yields sequences
    ``position .. len-1`` and advances ``position`` as each batch is handed out (so, saved right
    after a training step, it points at the next batch); a completed epoch resets it to 0. A
    stream built with the saved ``position`` continues with identical batches; the carried
    hidden state must be checkpointed with it for the run to continue bit for bit.

    Args:
        data: one split, a 1-D integer tensor of symbol ids (``Vocab.encode``), shape ``(n,)``.
        seq_len: time steps per sequence (BPTT length).
        batch_size: parallel streams (columns).
        position: sequence index to start from, ``0 <= position <= len(self)``.
        name: the split's name, for error messages.
        device: where the batches live (the whole split is moved there once).
    """

    def __init__(
        self,
        data: torch.Tensor,
        seq_len: int,
        batch_size: int,
        *,
        position: int = 0,
        name: str = "train",
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.is_floating_point():
            raise DataError(
                f"data: the {name} split must be a 1-D tensor of symbol ids; "
                "encode it with Vocab.encode"
            )
        for key, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"train.{key}: {value!r} is not allowed; give a positive integer")
        n = data.numel()
        need = batch_size * (seq_len + 1)
        if n < need:
            raise DataError(
                f"data: the {name} split has {n} characters, fewer than "
                f"batch_size*(seq_len+1) = {need}; use a longer corpus or smaller "
                "train.seq_len/train.batch_size"
            )
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.name = name
        length = n // batch_size
        # (L, batch): column b is stream b; time-major so that a sequence is a contiguous slice.
        self._streams = data[: length * batch_size].long().view(batch_size, length).t()
        self._streams = self._streams.contiguous().to(device)
        self._len = (length - 1) // seq_len
        if isinstance(position, bool) or not isinstance(position, int):
            raise DataError(f"data: position {position!r} must be an integer sequence index")
        if not 0 <= position <= self._len:
            raise DataError(
                f"data: position {position} is outside the {name} epoch of {self._len} "
                "sequences; resume with the checkpoint of the same data and train settings"
            )
        self.position = position

    def __len__(self) -> int:
        """Sequences per epoch."""
        return self._len

    @property
    def chars_per_epoch(self) -> int:
        """Predicted characters per epoch, ``len * seq_len * batch_size`` (the BPC denominator)."""
        return self._len * self.seq_len * self.batch_size

    def __getitem__(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence ``s``: ``(inputs, targets)``, LongTensors of shape ``(seq_len, batch)``."""
        if not -self._len <= s < self._len:
            raise IndexError(f"sequence {s} is outside 0..{self._len - 1}")
        s %= self._len
        t0 = s * self.seq_len
        inputs = self._streams[t0 : t0 + self.seq_len].clone()
        targets = self._streams[t0 + 1 : t0 + self.seq_len + 1].clone()
        return inputs, targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``position .. len-1`` of this epoch; ``position`` follows along."""
        for s in range(self.position, self._len):
            self.position = s + 1
            yield self[s]
        self.position = 0

    def __repr__(self) -> str:
        return (
            f"BatchStream({self.name}: {len(self)} sequences of (seq_len={self.seq_len}, "
            f"batch={self.batch_size}), position={self.position})"
        )


def eval_stream(
    split: torch.Tensor,
    seq_len: int,
    batch_size: int,
    *,
    name: str = "valid",
    device: torch.device | str | None = None,
) -> BatchStream:
    """A :class:`BatchStream` over a valid/test split, from its start.

    Evaluate by iterating it once with the hidden state carried across sequences, as in
    training; the loss is averaged over ``chars_per_epoch`` predicted characters.
    """
    return BatchStream(split, seq_len, batch_size, position=0, name=name, device=device)
