"""The one image preprocessing that training and serving share.

Two steps, both pure:

1. ``display_from_dicom(ds)`` turns stored DICOM pixel values into a display image in [0, 1]
   (0 black), as a radiologist's viewer would show it: Modality LUT (PS3.3 C.11.1), then the VOI LUT
   or window (PS3.3 C.11.2), then MONOCHROME1 inversion (PS3.3 C.7.6.3.1.2). Training images are
   JPEGs that are already display images, so training skips this step (``display_from_8bit``).
2. ``to_model_input(display, size)`` resamples a display image onto the grid the model sees.

The Kermany images were made by stretching each grayscale original to 224x224 with Pillow's bicubic
filter. Serving repeats exactly that on the full-resolution DICOM image before resizing to the
model's input, so both paths resize 224x224 images in the last step and see the same thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.multival import MultiValue

DATASET_GRID = 224
"""Side of the square grid the dataset images were stretched onto."""

FloatImage = NDArray[np.float32]


class UnsupportedImage(ValueError):
    """The pixel data cannot be shown as a single grayscale image."""


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS/IS element (PS3.3 C.11.2.1.2)."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def apply_window(
    values: NDArray[np.floating[Any]], center: float, width: float, function: str = "LINEAR"
) -> FloatImage:
    """Map values through a VOI window onto [0, 1] (PS3.3 C.11.2.1.2 and C.11.2.1.3).

    ``LINEAR`` follows the standard's formula with its half-unit offsets, ``LINEAR_EXACT`` the
    exact form, and ``SIGMOID`` the logistic form.
    """
    x = values.astype(np.float64, copy=False)
    function = function.upper()
    if function == "SIGMOID":
        mapped = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        mapped = (x - center) / width + 0.5
    elif function == "LINEAR":
        if width < 1:
            raise UnsupportedImage(f"window width {width} is below 1 (PS3.3 C.11.2.1.2.1)")
        mapped = (x - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
    else:
        raise UnsupportedImage(f"unknown VOILUTFunction {function!r}")
    clipped: FloatImage = np.clip(mapped, 0.0, 1.0).astype(np.float32)
    return clipped


def _scale_to_unit(values: NDArray[np.floating[Any]], low: float, high: float) -> FloatImage:
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    scaled: FloatImage = np.clip((values - low) / span, 0.0, 1.0).astype(np.float32)
    return scaled


def display_from_dicom(ds: Any, pixels: NDArray[Any] | None = None) -> FloatImage:
    """Return the display image of a single-frame grayscale DICOM image, values in [0, 1].

    ``pixels`` is the decoded Pixel Data when the caller has it already (``ds.pixel_array``
    otherwise). The steps, in the order the standard's grayscale pipeline applies them (PS3.4 N.2):

    - Modality LUT: Rescale Slope/Intercept or the Modality LUT Sequence (PS3.3 C.11.1).
    - VOI: the first VOI LUT in the VOI LUT Sequence, else the first Window Center/Width with its
      VOI LUT Function (PS3.3 C.11.2). Without either, the full range of Bits Stored for images of
      8 bits or less (their values already are display values), else the image's own 0.5th to
      99.5th percentile, which is how viewers choose a default window.
    - MONOCHROME1 (minimum value shown white) is inverted so 0 is always black.
    """
    from pydicom.pixels.processing import apply_modality_lut, apply_voi

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise UnsupportedImage(
            f"PhotometricInterpretation {photometric or 'absent'} is not grayscale"
        )
    raw = ds.pixel_array if pixels is None else pixels
    if raw.ndim == 3:
        raw = raw[0]  # first frame of a multi-frame image
    if raw.ndim != 2:
        raise UnsupportedImage(f"pixel array of shape {raw.shape} is not a 2D image")

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        voi = apply_voi(apply_modality_lut(raw, ds), ds, index=0)
        display = _scale_to_unit(voi.astype(np.float64), 0.0, float(2**lut_bits - 1))
    else:
        values = apply_modality_lut(raw, ds).astype(np.float64)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            display = apply_window(
                values,
                _first(ds.WindowCenter),
                _first(ds.WindowWidth),
                str(ds.get("VOILUTFunction", "LINEAR")),
            )
        elif int(ds.get("BitsStored", 8)) <= 8 and "ModalityLUTSequence" not in ds:
            slope = float(ds.get("RescaleSlope", 1.0))
            intercept = float(ds.get("RescaleIntercept", 0.0))
            top = (2 ** int(ds.get("BitsStored", 8)) - 1) * slope + intercept
            display = _scale_to_unit(values, min(intercept, top), max(intercept, top))
        else:
            low, high = np.percentile(values, [0.5, 99.5])
            display = _scale_to_unit(values, float(low), float(high))

    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return display.astype(np.float32, copy=False)


def display_from_8bit(image: NDArray[np.uint8]) -> FloatImage:
    """Display image of an 8-bit grayscale or RGB picture (a dataset JPEG), values in [0, 1]."""
    if image.ndim == 3:
        image = image[..., 0]  # the dataset's RGB JPEGs carry three identical channels
    return (image.astype(np.float32) / 255.0).astype(np.float32)


def _resize(image: FloatImage, size: int) -> FloatImage:
    """Stretch onto a size x size grid with Pillow's bicubic filter (antialiased when shrinking)."""
    if image.shape == (size, size):
        return image
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32)


def to_model_input(display: FloatImage, size: int) -> FloatImage:
    """Resample a display image to the model's ``size`` x ``size`` x 1 input, values in [0, 1].

    The image is first stretched onto the dataset's 224x224 grid (aspect ratio not kept, as in the
    dataset), then to ``size``. Training and serving both call this.
    """
    if display.ndim != 2:
        raise UnsupportedImage(f"display image of shape {display.shape} is not 2D")
    grid = _resize(display.astype(np.float32, copy=False), DATASET_GRID)
    model_input = np.clip(_resize(grid, size), 0.0, 1.0)
    return model_input[..., np.newaxis]


def preprocess_dicom(ds: Any, size: int, pixels: NDArray[Any] | None = None) -> FloatImage:
    """Model input for a DICOM image: ``to_model_input(display_from_dicom(ds), size)``."""
    return to_model_input(display_from_dicom(ds, pixels), size)
