"""DICOM through the one loader: files generated with pydicom from real radiographs in
../shared/data (8-bit, 12/16-bit, MONOCHROME1, rescale + window, no pixel data), and a
CSV dataset that lists .dcm files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from sslmed.core.errors import DataError, ImageLoadError
from sslmed.data.imaging import apply_window, check_image, load_image
from sslmed.data.roots import resolve_data_root
from sslmed.testing.dicom import dicom_dataset

DATA = resolve_data_root()
COVID3 = DATA / "covid3" / "images"
pytestmark = pytest.mark.needs_data


def real_grey(name: str = "No_findings/00001281_000.png") -> np.ndarray:
    return np.asarray(Image.open(COVID3 / name).convert("L"))


def write_dicom(
    path: Path, pixels: np.ndarray | None, *, bits_stored: int = 8, photometric: str = "MONOCHROME2", **elements: object
) -> Path:
    """A minimal valid DICOM file (explicit VR little endian) holding ``pixels``."""
    if pixels is None:
        ds = dicom_dataset()
    else:
        allocated = 8 if pixels.dtype == np.uint8 else 16
        ds = dicom_dataset(*pixels.shape, bits_allocated=allocated, bits_stored=bits_stored, photometric=photometric)
        ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_8_bit_monochrome2_round_trips(tmp_path: Path) -> None:
    grey = real_grey()
    path = write_dicom(tmp_path / "eight.dcm", grey)
    assert np.array_equal(np.asarray(load_image(path)), grey)  # 8-bit: shown as stored
    info = check_image(path)
    assert info.format == "DICOM" and info.bits == 8 and info.size == (grey.shape[1], grey.shape[0])


def test_12_bit_in_16_bit_words_becomes_8_bit(tmp_path: Path) -> None:
    grey = real_grey()
    twelve = grey.astype(np.uint16) * 16 + 7  # 12-bit values, 0..4087
    path = write_dicom(tmp_path / "twelve.dcm", twelve, bits_stored=12)
    loaded = np.asarray(load_image(path))
    expected = np.round((grey.astype(float) - grey.min()) / (grey.max() - grey.min()) * 255)
    assert loaded.dtype == np.uint8 and np.abs(loaded - expected).max() <= 1
    assert check_image(path).bits == 12


def test_16_bit_full_range(tmp_path: Path) -> None:
    grey = real_grey()
    path = write_dicom(tmp_path / "sixteen.dcm", grey.astype(np.uint16) * 257, bits_stored=16)
    loaded = np.asarray(load_image(path, mode="RGB"))
    assert loaded.shape == grey.shape + (3,)
    assert np.corrcoef(loaded[..., 0].ravel(), grey.ravel())[0, 1] > 0.9999


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    grey = real_grey()
    normal = np.asarray(load_image(write_dicom(tmp_path / "m2.dcm", grey)))
    inverted = np.asarray(
        load_image(write_dicom(tmp_path / "m1.dcm", (255 - grey).astype(np.uint8), photometric="MONOCHROME1"))
    )
    assert np.array_equal(inverted, normal)  # MONOCHROME1 of the negative shows the same picture


def test_rescale_slope_intercept_and_window(tmp_path: Path) -> None:
    grey = real_grey()
    stored = grey.astype(np.uint16) * 8  # modality value = stored * 0.5 - 1024
    path = write_dicom(
        tmp_path / "window.dcm",
        stored,
        bits_stored=12,
        RescaleSlope="0.5",
        RescaleIntercept="-1024",
        WindowCenter="-700",
        WindowWidth="400",
    )
    values = stored.astype(float) * 0.5 - 1024
    lower, upper = -700 - 0.5 - 399 / 2, -700 - 0.5 + 399 / 2
    expected = np.clip((values - (-700 - 0.5)) / 399 + 0.5, 0, 1) * 255
    loaded = np.asarray(load_image(path)).astype(float)
    assert np.abs(loaded - np.round(expected)).max() <= 1
    assert loaded[values <= lower].max() == 0 and loaded[values > upper].min() == 255
    assert 0 < (loaded == 255).mean() < 1  # the window clips part of the image


def test_multi_valued_window_takes_the_first(tmp_path: Path) -> None:
    grey = real_grey()
    one = write_dicom(tmp_path / "one.dcm", grey, WindowCenter="128", WindowWidth="128")
    two = write_dicom(tmp_path / "two.dcm", grey, WindowCenter=["128", "40"], WindowWidth=["128", "80"])
    assert np.array_equal(np.asarray(load_image(one)), np.asarray(load_image(two)))


def test_sigmoid_window_function() -> None:
    values = np.array([-1000.0, 0.0, 1000.0])
    out = apply_window(values, 0.0, 200.0, "SIGMOID")
    assert out[0] < 1 and abs(out[1] - 127.5) < 1e-9 and out[2] > 254


def test_missing_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "header_only.dcm", None)
    with pytest.raises(ImageLoadError, match=r"header_only\.dcm: DICOM file has no pixel data"):
        load_image(path)


def test_dicom_detected_by_content_whatever_the_name(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "scan.img", real_grey())
    assert load_image(path).size == (256, 256)


def test_text_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("not a dicom file at all\n")
    with pytest.raises(
        ImageLoadError, match=r"notes\.dcm: .*(not a DICOM file|not a readable DICOM file|no pixel data)"
    ):
        load_image(path)


def test_truncated_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "full.dcm", real_grey())
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.dcm: "):
        load_image(cut)


def test_csv_dataset_lists_dicom_files(tmp_path: Path) -> None:
    from sslmed.default_plugins.datasets import CsvArgs, build_csv

    folder = tmp_path / "dicoms"
    (folder / "images").mkdir(parents=True)
    rows = ["path,label,patient_id"]
    names = sorted(p.name for p in (COVID3 / "Pneumonia").glob("*.png"))[:6]
    for i, name in enumerate(names):
        bits = 12 if i % 2 else 8
        pixels = real_grey(f"Pneumonia/{name}")
        pixels = pixels.astype(np.uint16) * 16 if bits == 12 else pixels
        write_dicom(folder / "images" / f"{i}.dcm", pixels, bits_stored=bits, photometric="MONOCHROME2")
        rows.append(f"{i}.dcm,{'a' if i < 3 else 'b'},p{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    source = build_csv(
        CsvArgs(path=str(folder), patient_column="patient_id", test_size=0, val_size=0), data_root=tmp_path
    )
    assert len(source.records("train")) == 6
    assert source.read("1.dcm", "L").size == (256, 256)
    write_dicom(folder / "images" / "0.dcm", None)  # now one has no pixels
    with pytest.raises(DataError, match=r"0\.dcm: DICOM file has no pixel data"):
        build_csv(CsvArgs(path=str(folder), test_size=0, val_size=0), data_root=tmp_path)
    skipped = build_csv(CsvArgs(path=str(folder), test_size=0, val_size=0, on_error="skip"), data_root=tmp_path)
    assert [s.ref for s in skipped.skipped] == ["0.dcm"] and len(skipped.records("train")) == 5


def test_pydicom_can_read_what_we_write(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "check.dcm", real_grey())
    assert pydicom.dcmread(path).pixel_array.shape == (256, 256)


def test_signed_16_bit_with_intercept(tmp_path: Path) -> None:
    grey = real_grey()
    signed = grey.astype(np.int16) * 8 - 1000  # CT-like signed values
    path = write_dicom(
        tmp_path / "signed.dcm",
        signed.astype(np.int16).view(np.uint16),
        bits_stored=16,
        PixelRepresentation=1,
        RescaleSlope="1",
        RescaleIntercept="-24",
    )
    loaded = np.asarray(load_image(path))
    assert np.corrcoef(loaded.ravel(), grey.ravel())[0, 1] > 0.9999 and loaded.min() == 0 and loaded.max() == 255


def test_rgb_dicom(tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(DATA / "samples" / "covid_cxnet_001.jpeg").convert("RGB").resize((128, 96)))
    path = write_dicom(tmp_path / "rgb.dcm", None)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    assert np.array_equal(np.asarray(load_image(path, "RGB")), rgb)


def test_rle_compressed_dicom_decodes(tmp_path: Path) -> None:
    from pydicom.uid import RLELossless

    path = write_dicom(tmp_path / "rle.dcm", real_grey())
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    assert np.array_equal(np.asarray(load_image(path)), real_grey())


def test_undecodable_compressed_pixel_data(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", real_grey())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 64])  # not a real JPEG 2000 stream
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(
        ImageLoadError, match=r"j2k\.dcm: DICOM pixel data cannot be decoded \(transfer syntax JPEG 2000"
    ):
        load_image(path)
