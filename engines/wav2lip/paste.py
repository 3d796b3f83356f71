"""Face crop for the model and paste-back of its output.

Crop: the box around the face landmarks, grown by Wav2Lip's pads
(top, bottom, left, right) = (0, 10, 0, 0) pixels (more room below the chin,
as inference.py does), made square around its centre, and resampled to S x S
(96 for wav2lip_96) with one affine warp (parts outside the frame replicate the
border).  Frames are RGB here; the model sees BGR.

Paste-back: the generated crop is warped back with the inverse affine and
blended through a feathered mask that covers only the lower half of the crop
(the half Wav2Lip masks out and regenerates) and falls to zero at its edges,
so nothing outside the mouth box changes.  "Colour kept": the generated lower
half is shifted to the per-channel mean colour of the original lower half
before blending (Wav2Lip's output drifts in tint and brightness).
"""
from __future__ import annotations

import cv2
import numpy as np

PADS = (0, 10, 0, 0)  # top, bottom, left, right, in pixels (Wav2Lip inference.py --pads)
FEATHER = 0.12        # feather width as a fraction of the crop side
SMOOTH_T = 5          # frames averaged per box (inference.py: get_smoothened_boxes(boxes, T=5))


def smoothened_boxes(boxes, T: int = SMOOTH_T):
    """Wav2Lip's get_smoothened_boxes on a copy, in floats: box i becomes the mean of boxes
    i..i+T-1; the last ones the mean of the last T, updated in place as the original does
    (so the tail averages boxes it has already smoothed)."""
    b = np.array(boxes, dtype=np.float64, copy=True)
    n = len(b)
    for i in range(n):
        window = b[n - T:] if i + T > n else b[i:i + T]
        b[i] = np.mean(window, axis=0)
    return b


class BoxSmoother:
    """get_smoothened_boxes for a stream of frames, with T-1 frames of look-ahead.

    The original smooths the boxes of a whole video in which every frame has a face.
    Here faces come per frame and may be missing for a while, so each run of consecutive
    frames with a face is smoothed as the original would smooth a video of that run.
    ``push(entry, box)`` takes an entry and its raw box (None: no face) and returns the
    entries now ready, in order, as (entry, smoothed box or None); ``finish()`` returns
    the rest.  Only the run's boxes (a few floats a frame) are kept, and at most T-1
    entries (frames) wait.
    """

    def __init__(self, T: int = SMOOTH_T):
        self.T = T
        self.raw: list = []        # raw boxes of the current run
        self.smoothed: list = []   # smoothed boxes of the run's entries already returned
        self.waiting: list = []    # entries of the run not yet returned

    def push(self, entry, box):
        if box is None:
            return self.finish() + [(entry, None)]
        self.raw.append(np.asarray(box, dtype=np.float64))
        self.waiting.append(entry)
        out = []
        while self.waiting and len(self.smoothed) + self.T <= len(self.raw):
            i = len(self.smoothed)  # its window i..i+T-1 holds raw boxes only
            self.smoothed.append(np.mean(self.raw[i:i + self.T], axis=0))
            out.append((self.waiting.pop(0), tuple(self.smoothed[-1])))
        return out

    def finish(self):
        """The run ends: the waiting entries get the original's tail treatment."""
        if not self.waiting:
            self.raw, self.smoothed = [], []
            return []
        boxes = np.array(self.smoothed + self.raw[len(self.smoothed):], dtype=np.float64)
        n, T = len(boxes), self.T
        for i in range(len(self.smoothed), n):
            window = boxes[n - T:] if i + T > n else boxes[i:i + T]
            boxes[i] = np.mean(window, axis=0)
        out = [(e, tuple(boxes[len(self.smoothed) + j])) for j, e in enumerate(self.waiting)]
        self.raw, self.smoothed, self.waiting = [], [], []
        return out


def face_box(lm: np.ndarray, pads=PADS):
    """Square box (x0, y0, side) around landmarks `lm` (K, 2) in pixels, grown by `pads`."""
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    top, bottom, left, right = pads
    x0, x1 = float(x0) - left, float(x1) + right
    y0, y1 = float(y0) - top, float(y1) + bottom
    side = max(x1 - x0, y1 - y0, 8.0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return cx - side / 2.0, cy - side / 2.0, side


def crop_matrix(box, size: int) -> np.ndarray:
    """Affine matrix mapping frame pixels to crop pixels (size x size)."""
    x0, y0, side = box
    s = size / side
    # pixel centres: crop pixel u covers frame x0 + (u + 0.5) / s - 0.5
    return np.array([[s, 0.0, -s * x0 + 0.5 * s - 0.5], [0.0, s, -s * y0 + 0.5 * s - 0.5]], np.float64)


def crop(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def model_input(crop_rgb: np.ndarray) -> np.ndarray:
    """(S,S,3) RGB uint8 -> (6,S,S) float32 in [0,1], BGR: masked crop (lower half zeroed) + reference."""
    s = crop_rgb.shape[0]
    bgr = crop_rgb[:, :, ::-1].astype(np.float32) / 255.0
    masked = bgr.copy()
    masked[s // 2:] = 0.0
    return np.concatenate([masked, bgr], axis=2).transpose(2, 0, 1)


def model_output(out: np.ndarray) -> np.ndarray:
    """(3,S,S) BGR in [0,1] -> (S,S,3) RGB float32 in [0,255]."""
    return np.clip(out.transpose(1, 2, 0)[:, :, ::-1], 0.0, 1.0).astype(np.float32) * 255.0


_MASKS: dict = {}


def mouth_mask(size: int) -> np.ndarray:
    """Feathered (S,S) float32 mask: 1 inside the lower half, 0 on its border and above it."""
    m = _MASKS.get(size)
    if m is None:
        y = np.arange(size, dtype=np.float32)[:, None]
        x = np.arange(size, dtype=np.float32)[None, :]
        half = size // 2
        d = np.minimum(np.minimum(y - half, size - 1 - y), np.minimum(x, size - 1 - x))
        t = np.clip(d / max(1.0, FEATHER * size), 0.0, 1.0)
        m = (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep
        _MASKS[size] = m
    return m


def mouth_box(box, frame_w: int, frame_h: int):
    """Frame pixel rectangle (x0, y0, x1, y1), clipped, that the paste-back may change."""
    x0, y0, side = box
    return (max(0, int(np.floor(x0)) - 1), max(0, int(np.floor(y0 + side / 2)) - 1),
            min(frame_w, int(np.ceil(x0 + side)) + 1), min(frame_h, int(np.ceil(y0 + side)) + 1))


def paste(frame: np.ndarray, gen_rgb: np.ndarray, crop_rgb: np.ndarray, m: np.ndarray, box,
          color_fix: bool = True) -> np.ndarray:
    """Blend the generated crop (S,S,3 float RGB 0..255) into `frame` (in place) and return it."""
    size = gen_rgb.shape[0]
    mask = mouth_mask(size)
    gen = gen_rgb
    if color_fix:
        w = mask[:, :, None]
        tot = float(w.sum())
        if tot > 0:
            d = ((crop_rgb.astype(np.float32) - gen) * w).sum(axis=(0, 1)) / tot
            gen = gen + d[None, None, :]
    h, wd = frame.shape[:2]
    rx0, ry0, rx1, ry1 = mouth_box(box, wd, h)
    if rx1 <= rx0 or ry1 <= ry0:
        return frame
    inv = cv2.invertAffineTransform(m)
    inv[:, 2] -= (rx0, ry0)
    rw, rh = rx1 - rx0, ry1 - ry0
    g = cv2.warpAffine(gen, inv, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(mask, inv, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0)[:, :, None]
    roi = frame[ry0:ry1, rx0:rx1].astype(np.float32)
    frame[ry0:ry1, rx0:rx1] = np.clip(roi + (g - roi) * a + 0.5, 0, 255).astype(np.uint8)
    return frame
