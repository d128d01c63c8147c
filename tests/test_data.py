"""The data layer: shipped corpora, byte vocabulary, contiguous splits, BPTT batch streams."""

import hashlib

import pytest
import torch

from rpusim.data import (
    CORPORA,
    BatchStream,
    DataError,
    ShippedCorpus,
    Vocab,
    eval_stream,
    load_corpus,
    slice_corpus,
    split,
)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# -- shipped corpora ---------------------------------------------------------------------------


def test_warpeace_is_karpathys_file_with_the_papers_87_symbol_vocabulary():
    data = load_corpus("warpeace")
    assert len(data) == 3_258_246
    assert hashlib.sha256(data).hexdigest() == (
        "fb66ba999dafe24017cdd59e04c56d385a9c8466993d374fd4c6f08b2142985e"
    )
    assert data.startswith(b'\xef\xbb\xbf"Well, Prince, so Genoa') and b"\r\n" in data
    assert Vocab.from_data(data).size == 87 == CORPORA["warpeace"].distinct_bytes
    assert load_corpus("warpeace") is data  # decompressed once per process


def test_linux_substitute_ships_unchanged():
    data = load_corpus("linux")
    assert len(data) == 6_206_952 == CORPORA["linux"].size
    digest = hashlib.sha256(data).hexdigest()
    assert digest == CORPORA["linux"].sha256
    assert digest == "387961eb623f9718810c49e0dae1b9141b93639acb560c463a0b29d38e011ed5"
    assert b"\r" not in data
    assert Vocab.from_data(data).size == 106 == CORPORA["linux"].distinct_bytes


def test_any_file_loads_as_raw_bytes(tmp_path):
    binary = tmp_path / "all_bytes.bin"
    binary.write_bytes(bytes(range(256)) * 3)
    assert load_corpus(binary) == bytes(range(256)) * 3
    assert load_corpus(str(binary)) == bytes(range(256)) * 3
    text = tmp_path / "poem.txt"
    text.write_text("naïve café\r\n", encoding="utf-8")
    assert load_corpus(str(text)) == "naïve café\r\n".encode()


# -- one-line errors that name the field ---------------------------------------------------------


def test_unknown_name_suggests_the_closest_shipped_corpus():
    with pytest.raises(DataError) as excinfo:
        load_corpus("warpease")
    assert one_line_error(excinfo) == (
        "data.corpus: 'warpease' is neither a shipped corpus (warpeace, linux) nor an existing "
        "file; did you mean 'warpeace'?"
    )


def test_missing_empty_directory_and_unreadable_files_are_refused(tmp_path, monkeypatch):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as excinfo:
        load_corpus(missing)
    msg = one_line_error(excinfo)
    assert msg.startswith("data.corpus: no such file") and str(missing) in msg

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        load_corpus(empty)
    assert one_line_error(excinfo).startswith(f"data.corpus: {empty} is empty")

    with pytest.raises(DataError) as excinfo:
        load_corpus(tmp_path)
    assert one_line_error(excinfo).startswith(f"data.corpus: {tmp_path} is a directory")

    locked = tmp_path / "locked.txt"
    locked.write_bytes(b"secret")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(locked), "read_bytes", refuse)
    with pytest.raises(DataError) as excinfo:
        load_corpus(locked)
    assert one_line_error(excinfo) == (
        f"data.corpus: cannot read {locked} (PermissionError); check its permissions"
    )


def test_a_damaged_or_missing_shipped_corpus_is_refused(monkeypatch):
    wrong = ShippedCorpus("warpeace.txt.xz", 3_258_246, "0" * 64, 87, "wrong checksum")
    monkeypatch.setitem(CORPORA, "damaged", wrong)
    with pytest.raises(DataError) as excinfo:
        load_corpus("damaged")
    assert one_line_error(excinfo).startswith("data.corpus: shipped corpus 'damaged' is damaged")
    monkeypatch.setitem(CORPORA, "gone", ShippedCorpus("gone.txt.xz", 1, "0" * 64, 1, "absent"))
    with pytest.raises(DataError) as excinfo:
        load_corpus("gone")
    assert "cannot be read (FileNotFoundError); reinstall rpusim" in one_line_error(excinfo)


def test_a_split_too_short_for_one_sequence_is_refused():
    with pytest.raises(DataError) as excinfo:
        BatchStream(torch.arange(100), seq_len=10, batch_size=10)
    assert one_line_error(excinfo) == (
        "data: the train split has 100 characters, fewer than batch_size*(seq_len+1) = 110; "
        "use a longer corpus or smaller train.seq_len/train.batch_size"
    )
    with pytest.raises(DataError) as excinfo:
        eval_stream(torch.arange(5), seq_len=2, batch_size=2, name="test")
    assert one_line_error(excinfo).startswith("data: the test split has 5 characters")


def test_bad_settings_are_refused_with_their_key():
    for kwargs, key in (
        ({"seq_len": 0, "batch_size": 2}, "train.seq_len"),
        ({"seq_len": 3, "batch_size": 1.5}, "train.batch_size"),
    ):
        with pytest.raises(DataError) as excinfo:
            BatchStream(torch.arange(100), **kwargs)
        assert one_line_error(excinfo).startswith(f"{key}: ")
    with pytest.raises(DataError) as excinfo:
        split(b"abc", (0.8, 0.3, 0.1))
    assert one_line_error(excinfo).startswith("data.split: ")
    with pytest.raises(DataError) as excinfo:
        slice_corpus(b"abc", 0)
    assert one_line_error(excinfo).startswith("data.max_bytes: ")
    with pytest.raises(DataError) as excinfo:
        BatchStream(torch.arange(100), seq_len=3, batch_size=2, position=17)
    assert one_line_error(excinfo).startswith("data: position 17 is outside")


# -- vocabulary ---------------------------------------------------------------------------------


def test_encode_decode_round_trip_and_serialisation():
    data = load_corpus("warpeace")
    vocab = Vocab.from_data(data)
    assert list(vocab.symbols) == sorted(set(data))
    ids = vocab.encode(data[:200_000])
    assert ids.dtype == torch.int64 and ids.shape == (200_000,)
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab.size
    assert vocab.decode(ids) == data[:200_000]
    assert vocab.decode(ids[:12].tolist()) == data[:12]
    restored = Vocab.from_list(vocab.to_list())
    assert restored == vocab and all(type(s) is int for s in vocab.to_list())
    assert torch.equal(restored.encode(data[-5000:]), vocab.encode(data[-5000:]))


def test_vocab_refuses_unknown_bytes_and_ids():
    vocab = Vocab.from_data(b"abc")
    assert vocab.to_list() == [97, 98, 99]
    with pytest.raises(DataError) as excinfo:
        vocab.encode(b"abz")
    assert "0x7a at offset 2" in one_line_error(excinfo)
    with pytest.raises(DataError):
        vocab.decode(torch.tensor([0, 3]))
    with pytest.raises(DataError):
        Vocab.from_list([99, 97])


# -- splits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 10, 999, 3_258_246])
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.9, 0.05, 0.05), (1.0, 0.0, 0.0)])
def test_splits_are_contiguous_and_cover_the_data_exactly(n, fractions):
    data = torch.arange(n)
    train, valid, test = split(data, fractions)
    assert torch.equal(torch.cat([train, valid, test]), data)
    assert len(train) == int(n * fractions[0])
    assert len(train) + len(valid) == int(n * (fractions[0] + fractions[1]))


def test_split_of_bytes_is_bytes():
    data = load_corpus("warpeace")
    parts = split(data)
    assert all(isinstance(p, bytes) for p in parts) and b"".join(parts) == data
    assert [len(p) for p in parts] == [2_606_596, 325_825, 325_825]


# -- BPTT batch streams -------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "seq_len", "batch_size"), [(1000, 7, 5), (66, 10, 6), (503, 4, 1)])
def test_stream_layout_targets_shifted_and_contiguous_across_sequences(n, seq_len, batch_size):
    # Symbol ids equal to their position make every offset visible.
    stream = BatchStream(torch.arange(n), seq_len, batch_size)
    length = n // batch_size
    assert len(stream) == (length - 1) // seq_len >= 1
    assert stream.chars_per_epoch == len(stream) * seq_len * batch_size
    batches = list(stream)
    assert len(batches) == len(stream)
    t = torch.arange(seq_len)[:, None]
    b = torch.arange(batch_size)[None, :]
    for s, (inputs, targets) in enumerate(batches):
        assert inputs.shape == targets.shape == (seq_len, batch_size)
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs, b * length + s * seq_len + t)  # row b: b-th 1/batch of split
        assert torch.equal(targets[:-1], inputs[1:])  # targets are inputs shifted by one
        if s + 1 < len(batches):  # the stream continues where the last sequence stopped
            assert torch.equal(targets[-1], batches[s + 1][0][0])
    assert int(batches[-1][1].max()) < length * batch_size  # no stream reads past its own slice


def test_stream_on_the_real_corpus_reads_the_text_in_order():
    data = load_corpus("warpeace")
    vocab = Vocab.from_data(data)
    train, valid, _ = split(vocab.encode(data))
    stream = BatchStream(train, seq_len=100, batch_size=32)
    length = len(train) // 32
    inputs, targets = stream[3]
    for col in (0, 17, 31):
        start = col * length + 300
        assert vocab.decode(inputs[:, col]) == data[start : start + 100]
        assert vocab.decode(targets[:, col]) == data[start + 1 : start + 101]
    valid_stream = eval_stream(valid, seq_len=100, batch_size=16)
    assert valid_stream.name == "valid" and len(valid_stream) == (len(valid) // 16 - 1) // 100


def test_resume_from_position_gives_identical_batches():
    data = torch.randint(0, 87, (5_000,))
    reference = list(BatchStream(data, 13, 4))

    stream = BatchStream(data, 13, 4)
    for k, _ in enumerate(stream):
        if k == 40:
            break
    saved = stream.position
    assert saved == 41  # the next sequence to read, as saved in a checkpoint after step 40

    resumed = BatchStream(data, 13, 4, position=saved)
    rest = list(resumed)
    assert len(rest) == len(reference) - saved
    for (x, y), (x_ref, y_ref) in zip(rest, reference[saved:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)

    # A finished epoch rewinds, and the next epoch repeats the same batches.
    assert resumed.position == 0
    again = list(resumed)
    assert all(torch.equal(x, xr) for (x, _), (xr, _) in zip(again, reference, strict=True))
    # Saved right after the epoch's last step: the resumed epoch is already over.
    assert list(BatchStream(data, 13, 4, position=len(reference))) == []


def test_slice_corpus_takes_a_prefix():
    data = load_corpus("warpeace")
    assert slice_corpus(data, 1000) == data[:1000]
    assert slice_corpus(data, None) is data
    assert slice_corpus(b"abc", 10) == b"abc"
