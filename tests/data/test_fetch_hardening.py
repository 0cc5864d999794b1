"""Issue 21 (5), the download half: servers that send too much, too slowly, or lie
(the loopback server of sslmed.testing; no data needed)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from sslmed.core.errors import DataError
from sslmed.data.catalog import Download
from sslmed.data.fetch.download import download
from sslmed.testing.loopback import loopback_server

BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def server():
    with loopback_server() as running:
        yield running


def item(base: str, size: int | None = len(BODY), body: bytes = BODY) -> Download:
    return Download("x", f"{base}/x.bin", "x.bin", md5=hashlib.md5(body).hexdigest(), size=size)


def test_a_body_without_length_is_bounded_by_the_catalogue_size(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY * 20  # 20 times what the catalogue says
    served.no_length.add("/x.bin")
    with pytest.raises(DataError, match="more than the 16,384 bytes the catalogue gives"):
        download(item(base), tmp_path, quiet=True, retries=0)
    assert not list(tmp_path.iterdir()), "nothing past the limit is kept"


def test_a_dripping_server_meets_an_overall_deadline(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY
    served.drip["/x.bin"] = 0.05  # a byte every 50 ms: every read succeeds, the file never ends
    started = time.monotonic()
    with pytest.raises(DataError, match="too slow to finish"):
        download(item(base), tmp_path, quiet=True, retries=0, deadline=0.5)
    assert time.monotonic() - started < 5


def test_a_416_on_resume_never_promotes_a_truncated_part(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY
    served.refuse_range.add("/x.bin")
    (tmp_path / "x.bin.part").write_bytes(BODY[:100])  # left by an interrupted fetch
    path = download(item(base), tmp_path, quiet=True, wait=0)
    assert path.read_bytes() == BODY  # started over, not renamed at 100 bytes
    assert served.requests[-1] == ("/x.bin", None)


def test_a_non_numeric_content_length_is_one_clear_line(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY
    served.headers["/x.bin"] = {"Content-Length": "lots"}
    with pytest.raises(DataError, match="Content-Length that is not a number"):
        download(item(base), tmp_path, quiet=True, retries=0)


# ------------------------------------------------------------------- archive members


def _zip_with(path: Path, name: str, data: bytes) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return path


def test_a_zip_bomb_member_is_refused_while_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sslmed.data.fetch.unpack as unpack

    monkeypatch.setattr(unpack, "MAX_MEMBER_BYTES", 100_000)  # the 256 MiB limit, patched small
    path = _zip_with(tmp_path / "bomb.zip", "a/big.png", b"\0" * 1_000_000)  # 1 MB of zeros: about 1 kB
    with unpack.open_archive(path) as archive:
        with pytest.raises(DataError, match=r"member a/big\.png is 1,000,000 bytes uncompressed, more than"):
            archive.read(archive.members[0])


def test_a_tar_member_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import tarfile

    import sslmed.data.fetch.unpack as unpack

    monkeypatch.setattr(unpack, "MAX_MEMBER_BYTES", 100_000)
    path = tmp_path / "big.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for n in range(3):
            info = tarfile.TarInfo(f"m{n}.jpeg")
            info.size = 300_000
            tar.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(DataError, match=r"m0\.jpeg is 300,000 bytes uncompressed"):
        with unpack.open_archive(path):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["big.tar.gz"], "no member files are left behind"


def test_tar_members_are_streamed_to_disk_not_held_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 (5): "a 0.9 MB tar with 3 x 300 MB members holds them all in memory", at a
    thirtieth of the size: 3 members of 8 MiB (zeros: a 25 kB .tar.gz) under a 10 MiB cap.
    Opening the archive may not hold even one member; each reads back whole, and the
    members' temporary files are gone when the block ends."""
    import io
    import tarfile
    import tracemalloc

    import sslmed.data.fetch.unpack as unpack

    monkeypatch.setattr(unpack, "MAX_MEMBER_BYTES", 10 * 2**20)
    size = 8 * 2**20
    path = tmp_path / "big.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for n in range(3):
            info = tarfile.TarInfo(f"MedNIST/CXR/{n:06d}.jpeg")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    tracemalloc.start()
    try:
        with unpack.open_archive(path) as archive:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert len(archive.members) == 3
            assert all(archive.read(m) == bytes(size) for m in archive.members)
    finally:
        tracemalloc.stop()
    assert peak < size // 2, f"peak {peak:,} bytes while opening: a member ({size:,}) was held in memory"
    assert [p.name for p in tmp_path.iterdir()] == ["big.tar.gz"], "the members' temporary files are removed"


def test_a_corrupt_crc_is_one_line_and_the_archive_is_removed(tmp_path: Path) -> None:
    import zipfile

    import sslmed.data.fetch.unpack as unpack

    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.png", b"A" * 1000)
    data = bytearray(path.read_bytes())
    at = data.index(b"A" * 1000)
    data[at + 10] = ord("B")  # one byte of the member changed: its CRC no longer matches
    path.write_bytes(bytes(data))
    with unpack.open_archive(path) as archive:
        with pytest.raises(DataError, match=r"bad\.zip: a damaged archive .*it was removed") as error:
            archive.read(archive.members[0])
    assert "\n" not in str(error.value)
    assert not path.exists(), "the next fetch downloads it again instead of reusing it"


def test_a_corrupt_tar_xz_is_one_line_and_removed(tmp_path: Path) -> None:
    """Found by bench/fuzz.py: a .tar.xz damaged near its end raised a raw LZMAError
    ("Corrupt input data"), not the one-line DataError."""
    import io
    import random
    import tarfile

    import sslmed.data.fetch.unpack as unpack

    path = tmp_path / "bad.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        info = tarfile.TarInfo("x.png")
        info.size = 200_000  # incompressible: the member's compressed bytes are most of the file
        tar.addfile(info, io.BytesIO(random.Random(0).randbytes(info.size)))
    data = bytearray(path.read_bytes())
    start = len(data) - 6000  # the end of the member's stream: the tar header still reads
    for at in range(start, start + 8):
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.tar\.xz: a damaged archive .*it was removed") as error:
        with unpack.open_archive(path) as archive:
            for member in archive.members:
                archive.read(member)
    assert "\n" not in str(error.value)
    assert not path.exists()
    assert not list(tmp_path.iterdir()), "the members unpacked before the damage are removed too"


# ------------------------------------------------------------ the image count


def test_the_image_count_accepts_90_percent_and_more_and_refuses_less(tmp_path: Path) -> None:
    """A copy may hold more images than the catalogue (cxr_corpus's full database) or a
    few fewer; under 90% it is refused, naming a pinned or hand-downloaded file, kept."""
    from dataclasses import replace

    from sslmed.data.catalog import CATALOG
    from sslmed.data.fetch import check_image_count

    entry = replace(CATALOG["not_cxr"], images=20)  # MedNIST: pinned, so the archive is kept
    files = {"MedNIST.tar.gz": tmp_path / "MedNIST.tar.gz"}
    files["MedNIST.tar.gz"].write_bytes(b"archive")
    assert entry.min_images == 18
    for found in (18, 20, 25):
        check_image_count(entry, found, files, tmp_path / "not_cxr")
    with pytest.raises(
        DataError, match=r"not_cxr: the prepared copy holds 17 images, the catalogue expects 20 "
    ) as error:
        check_image_count(entry, 17, files, tmp_path / "not_cxr")
    assert "match their published checksums" in str(error.value) and "\n" not in str(error.value)
    corpus = replace(CATALOG["cxr_corpus"], images=20)  # the Kaggle file, downloaded by hand: named, kept
    files["covid19-radiography-database.zip"] = tmp_path / "archive.zip"
    with pytest.raises(DataError, match=r"check that .*archive\.zip is the whole download from https://www\.kaggle"):
        check_image_count(corpus, 3, files, tmp_path / "cxr_corpus")
    assert files["MedNIST.tar.gz"].exists(), "a pinned file matched its checksum: downloading it again would not help"


def test_a_data_root_that_cannot_hold_files_is_one_clear_line() -> None:
    """`sslmed data fetch covid3 --root /proc/self` ended in a raw FileNotFoundError."""
    from click.testing import CliRunner

    from sslmed.app.cli import cli

    result = CliRunner().invoke(cli, ["data", "fetch", "covid3", "--root", "/proc/self"])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert lines and "cannot write downloads in /proc/self/.downloads" in lines[-1], result.output
    assert "FileNotFoundError" not in result.output and "Traceback" not in result.output
