"""Lip-sync score and contact sheets.

The score is the Pearson correlation between the mouth aperture measured by the
face mesh on the *output* frames (inner-lip gap / face height) and the audio's
loudness envelope, over the frames where a face was measured.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def pearson(a, b) -> float | None:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 8:
        return None
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    if den <= 1e-12:
        return 0.0
    return float(np.dot(a, b) / den)


def lipsync_score(aperture: np.ndarray, envelope: np.ndarray) -> float | None:
    """`aperture` has NaN where no face was measured."""
    n = min(len(aperture), len(envelope))
    return pearson(aperture[:n], envelope[:n])


def pick_sheet_window(envelope: np.ndarray, fps: float, seconds: float = 4.0) -> tuple[int, int]:
    """The `seconds`-long window of the output with the most lively envelope."""
    n = len(envelope)
    w = max(1, min(n, int(round(seconds * fps))))
    if n <= w:
        return 0, n
    step = max(1, int(fps // 2))
    best, best_v = 0, -1.0
    for s in range(0, n - w + 1, step):
        v = float(np.var(envelope[s:s + w]))
        if v > best_v:
            best, best_v = s, v
    return best, best + w


class ContactSheet:
    """Collects face tiles at chosen frames while the video streams, then draws the sheet."""

    TILE = 168

    def __init__(self, envelope: np.ndarray, open_target: np.ndarray, fps: float, tiles: int = 12):
        self.env = envelope
        self.target = open_target
        self.fps = fps
        self.s0, self.s1 = pick_sheet_window(envelope, fps)
        count = min(tiles, self.s1 - self.s0)
        self.picks = sorted(set(int(round(x)) for x in np.linspace(self.s0, self.s1 - 1, count)))
        self.tiles: dict[int, np.ndarray] = {}
        self._box = None

    def wants(self, k: int) -> bool:
        return k in self.picks and k not in self.tiles

    def add(self, k: int, frame: np.ndarray, lm: np.ndarray | None):
        """Crop the lower face around the mouth (`lm`: landmark subset) or the frame centre."""
        h, w = frame.shape[:2]
        if lm is not None:
            x0, y0 = lm.min(axis=0)
            x1, y1 = lm.max(axis=0)
            fw, fh = x1 - x0, y1 - y0
            cx, cy = (x0 + x1) / 2, y0 + 0.68 * fh
            side = 0.85 * max(fw, fh)
            self._box = (cx, cy, side)
        elif self._box is None:
            self._box = (w / 2, h / 2, min(w, h) / 2)
        cx, cy, side = self._box
        xa, ya = int(round(cx - side / 2)), int(round(cy - side / 2))
        xb, yb = xa + int(round(side)), ya + int(round(side))
        pad = np.zeros((max(1, yb - ya), max(1, xb - xa), 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(0, xa), max(0, ya), min(w, xb), min(h, yb)
        if sx1 > sx0 and sy1 > sy0:
            pad[sy0 - ya:sy1 - ya, sx0 - xa:sx1 - xa] = frame[sy0:sy1, sx0:sx1]
        self.tiles[k] = cv2.resize(pad, (self.TILE, self.TILE), interpolation=cv2.INTER_AREA)

    def write(self, path: str, aperture: np.ndarray | None = None, title: str = "") -> str:
        T = self.TILE
        picks = [k for k in self.picks if k in self.tiles]
        ncol = max(1, len(picks))
        W = ncol * T
        plot_h = 150
        header = 26
        sheet = np.full((header + T + plot_h + 34, W, 3), 250, np.uint8)
        cv2.putText(sheet, title[:int(W / 8)], (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
        for c, k in enumerate(picks):
            sheet[header:header + T, c * T:(c + 1) * T] = self.tiles[k]
            cv2.putText(sheet, f"{k / self.fps:.2f}s", (c * T + 4, header + T - 6), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (255, 255, 255), 1, cv2.LINE_AA)
        # the envelope (and target/measured aperture) over the window, aligned with the tiles
        top = header + T + 8
        s0, s1 = self.s0, self.s1

        def x_of(k):
            if len(picks) <= 1:
                return W // 2
            # tile centres sit at picks; map frame index to x so tile centres line up
            return int(round(T / 2 + (k - picks[0]) / max(1, picks[-1] - picks[0]) * (W - T)))

        cv2.rectangle(sheet, (0, top), (W - 1, top + plot_h), (235, 235, 235), -1)

        def polyline(values, color, thick):
            vals = np.asarray(values, np.float64)
            pts = []
            for k in range(s0, s1):
                v = vals[k] if k < len(vals) else np.nan
                if not np.isfinite(v):
                    if len(pts) > 1:
                        cv2.polylines(sheet, [np.array(pts, np.int32)], False, color, thick, cv2.LINE_AA)
                    pts = []
                    continue
                pts.append((x_of(k), int(round(top + plot_h - 6 - v * (plot_h - 12)))))
            if len(pts) > 1:
                cv2.polylines(sheet, [np.array(pts, np.int32)], False, color, thick, cv2.LINE_AA)

        polyline(self.env, (70, 70, 200), 2)  # RGB: blue
        polyline(self.target, (60, 160, 60), 1)
        if aperture is not None:
            ap = np.asarray(aperture, np.float64)
            seg = ap[s0:s1]
            fin = seg[np.isfinite(seg)]
            if len(fin) > 1 and fin.max() > fin.min():
                norm = (ap - fin.min()) / (fin.max() - fin.min())
                polyline(norm, (200, 90, 30), 1)
        for k in picks:
            cv2.line(sheet, (x_of(k), top), (x_of(k), top + plot_h), (180, 180, 180), 1)
        legend = [("audio envelope", (70, 70, 200)), ("mouth target", (60, 160, 60)),
                  ("measured aperture", (200, 90, 30))]
        x = 6
        for name, col in legend:
            cv2.line(sheet, (x, top + plot_h + 14), (x + 18, top + plot_h + 14), col, 2)
            cv2.putText(sheet, name, (x + 22, top + plot_h + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40), 1,
                        cv2.LINE_AA)
            x += 30 + 8 * len(name)
        ok = cv2.imwrite(path, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"cannot write {path}")
        return path
