"""Rebuild the shipped corpora ``src/rpusim/corpora/*.xz`` from their uncompressed sources.

    python scripts/pack_corpora.py --source FOLDER  # pack from FOLDER, then verify
    python scripts/pack_corpora.py --check          # only verify the shipped files

FOLDER holds ``warpeace.txt``, ``linux_substitute.txt`` and ``linux_substitute.files.txt`` (not
part of the repository; where they come from: ``src/rpusim/corpora/README.md``).

Each source file is checked against the sha256 in ``rpusim.data.CORPORA`` before packing, and each
packed file is decompressed and checked again. Compression is the standard library's ``lzma``
(xz container, preset 9 | extreme, CRC64), which writes no timestamps: the same input and liblzma
give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import lzma
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_data_module():
    """``rpusim/data.py`` alone, without importing the rest of the package."""
    spec = importlib.util.spec_from_file_location("_rpusim_data", ROOT / "src/rpusim/data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CORPORA = _load_data_module().CORPORA
CORPORA_DIR = ROOT / "src" / "rpusim" / "corpora"
SOURCES = {"warpeace": "warpeace.txt", "linux": "linux_substitute.txt"}
FILE_LIST = ("linux_substitute.files.txt", "linux.files.txt")
FILE_LIST_SHA256 = "057252e1ec436800f9e45b1595596ef4a10166da74ea0ad68ad902eada5202ff"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bytes(name: str, data: bytes, what: str) -> None:
    want = CORPORA[name]
    if len(data) != want.size or sha256(data) != want.sha256:
        sys.exit(
            f"{what}: {len(data)} bytes, sha256 {sha256(data)}; "
            f"expected {want.size} bytes, sha256 {want.sha256}"
        )


def verify() -> None:
    for name, corpus in CORPORA.items():
        packed = CORPORA_DIR / corpus.file
        check_bytes(name, lzma.decompress(packed.read_bytes()), str(packed))
        print(
            f"ok  {packed.relative_to(ROOT)}  {packed.stat().st_size:,} bytes xz "
            f"-> {corpus.size:,} bytes, sha256 {corpus.sha256[:12]}..."
        )
    listing = CORPORA_DIR / FILE_LIST[1]
    if sha256(listing.read_bytes()) != FILE_LIST_SHA256:
        sys.exit(f"{listing}: sha256 differs from {FILE_LIST_SHA256}")
    print(f"ok  {listing.relative_to(ROOT)}")


def pack(source: Path) -> None:
    CORPORA_DIR.mkdir(parents=True, exist_ok=True)
    for src_name in (*SOURCES.values(), FILE_LIST[0]):
        if not (source / src_name).is_file():
            sys.exit(f"{source / src_name}: not found; pass --source FOLDER (see --help)")
    for name, src_name in SOURCES.items():
        data = (source / src_name).read_bytes()
        check_bytes(name, data, str(source / src_name))
        packed = lzma.compress(
            data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
        )
        (CORPORA_DIR / CORPORA[name].file).write_bytes(packed)
    shutil.copyfile(source / FILE_LIST[0], CORPORA_DIR / FILE_LIST[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        help="folder holding warpeace.txt and linux_substitute*.txt (needed unless --check)",
    )
    parser.add_argument("--check", action="store_true", help="only verify the shipped files")
    args = parser.parse_args()
    if not args.check:
        if args.source is None:
            parser.error("give --source FOLDER to pack, or --check to verify the shipped files")
        pack(args.source)
    verify()


if __name__ == "__main__":
    main()
