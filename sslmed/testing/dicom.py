"""Minimal DICOM files for the tests and the fuzz bench, built in one place.

``dicom_dataset`` gives a Secondary Capture dataset with its file meta information and,
when ``rows`` and ``columns`` are given, the elements that describe grey pixels (no
``PixelData``: the caller adds it, raw or encapsulated, or leaves it out to test a
header alone). ``dicom_bytes`` serialises one as a DICOM file.
"""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom_dataset(
    rows: int | None = None,
    columns: int | None = None,
    *,
    syntax: str = ExplicitVRLittleEndian,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    frames: int | None = None,
) -> Dataset:
    """A dataset that ``save_as(..., enforce_file_format=True)`` writes as a valid file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "P0001"
    if rows is not None and columns is not None:
        stored = bits_stored or bits_allocated
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_allocated, stored, stored - 1, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """``ds`` as the bytes of a DICOM file."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


#: patient identifiers that must never reach the page, an API answer or the log
IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "P0001",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC4711",
}


def identified_dicom() -> bytes:
    """A 16-bit 64×64 DICOM with a window, a view position and every identifier of :data:`IDENTIFIERS`."""
    import numpy as np

    ds = dicom_dataset(64, 64)
    for key, value in IDENTIFIERS.items():
        setattr(ds, key, value)
    ds.ViewPosition, ds.WindowCenter, ds.WindowWidth = "PA", 2000, 3000
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4000).tobytes()
    return dicom_bytes(ds)
