"""The mouth renderer: a smooth local warp of jaw and lips plus a painted cavity.

Everything happens in a small region of interest around the mouth, in the
mouth's own frame (u along the line between the lip corners, v perpendicular,
pointing to the chin), so head tilt and motion are followed for free.

* Below the lower lip's inner edge the face moves down by ``D`` (the jaw drop),
  fully between lip and chin, fading out under the chin and towards the cheeks;
  the profile across the mouth is flat in the middle and fades to zero at the
  lip corners, widening towards the chin like a jaw.
* Above it the upper lip rises a little (``U``), fading out towards the nose.
* The gap that opens between them is the mouth cavity: a dark, slightly warm
  interior, a hint of upper teeth under the upper lip, a tongue hint on wide
  openings, anti-aliased edges and a soft shadow inside the lips.
* ``width`` narrows (rounded vowels) or spreads (``ee``) the mouth horizontally.

The warp is an identity at the border of the region, so the result pastes back
with no seam; a closing target (``D < 0``) lifts the lower lip over a mouth that
is open in the template.
"""
from __future__ import annotations

import cv2
import numpy as np

from facetrack import (LIPS_INNER_LOWER, LIPS_INNER_UPPER, LIPS_OUTER_LOWER, LIPS_OUTER_UPPER, idx)

_I_IN_LO = idx(LIPS_INNER_LOWER)
_I_IN_UP = idx(LIPS_INNER_UPPER)
_I_OUT_LO = idx(LIPS_OUTER_LOWER)
_I_OUT_UP = idx(LIPS_OUTER_UPPER)
_I = {k: idx(k) for k in (61, 291, 78, 308, 13, 14, 152, 10, 2, 17, 0)}

# appearance of the cavity (RGB)
_DARK = np.array([62.0, 26.0, 28.0], np.float32)
_DEEP = np.array([26.0, 9.0, 11.0], np.float32)
_TEETH = np.array([226.0, 221.0, 206.0], np.float32)
_TONGUE = np.array([150.0, 72.0, 78.0], np.float32)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _profile(x):
    """1 on the middle third, smooth fall to 0 at |x| = 1."""
    ax = np.abs(x)
    return 1.0 - _smoothstep((ax - 0.35) / 0.65)


def _curve(uv: np.ndarray):
    """Sort points by u; returns (u, v) arrays for np.interp."""
    o = np.argsort(uv[:, 0])
    return uv[o, 0].astype(np.float32), uv[o, 1].astype(np.float32)


class MouthGeometry:
    """Mouth frame derived from one frame's landmark subset."""

    def __init__(self, lm: np.ndarray):
        p = lambda k: lm[_I[k]].astype(np.float64)  # noqa: E731
        left, right = p(61), p(291)
        eu = right - left
        n = np.linalg.norm(eu)
        if n < 1e-3:
            raise ValueError("degenerate mouth")
        eu /= n
        ev = np.array([-eu[1], eu[0]])
        if np.dot(p(152) - p(13), ev) < 0:  # v must point to the chin
            ev = -ev
        self.eu, self.ev = eu, ev
        self.origin = (left + right) / 2.0
        self.face_h = float(np.linalg.norm(p(152) - p(10)))
        self.half_w = n / 2.0
        self.half_w_in = max(float(np.linalg.norm(p(308) - p(78))) / 2.0, 0.5 * self.half_w)

        def to_uv(pts):
            d = pts.astype(np.float64) - self.origin
            return np.stack([d @ eu, d @ ev], axis=1)

        self.to_uv = to_uv
        self.in_lo = _curve(to_uv(lm[_I_IN_LO]))
        self.in_up = _curve(to_uv(lm[_I_IN_UP]))
        self.out_lo = _curve(to_uv(lm[_I_OUT_LO]))
        self.out_up = _curve(to_uv(lm[_I_OUT_UP]))
        self.chin_v = float(to_uv(p(152)[None])[0, 1])
        self.nose_v = float(to_uv(p(2)[None])[0, 1])  # negative: above the mouth
        self.u_in_c = float((to_uv(p(78)[None])[0, 0] + to_uv(p(308)[None])[0, 0]) / 2.0)
        self.gap0 = float(np.interp(0.0, *self.in_lo) - np.interp(0.0, *self.in_up))


class MouthRenderer:
    def __init__(self, max_gap: float = 0.105, strength: float = 1.0):
        self.max_gap = max_gap  # inner-lip gap at full opening, in face heights
        self.strength = strength

    def roi(self, g: MouthGeometry, D: float, shape):
        """Bounding box (x0, y0, x1, y1) of the region the warp touches."""
        h, w = shape[:2]
        umax = 1.8 * g.half_w + 4.0
        vmin = 1.15 * g.nose_v
        vmax = g.chin_v + max(0.45 * g.chin_v, 2.5 * abs(D)) + 4.0
        corners = []
        for u in (-umax, umax):
            for v in (vmin, vmax):
                corners.append(g.origin + u * g.eu + v * g.ev)
        c = np.array(corners)
        x0 = int(np.floor(c[:, 0].min())) - 2
        y0 = int(np.floor(c[:, 1].min())) - 2
        x1 = int(np.ceil(c[:, 0].max())) + 3
        y1 = int(np.ceil(c[:, 1].max())) + 3
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1)

    def render(self, frame: np.ndarray, lm: np.ndarray, open_: float, width: float = 0.0,
               out: np.ndarray | None = None) -> np.ndarray:
        """Return the frame with the mouth rendered (writes into `out` or a copy)."""
        if out is None:
            out = frame.copy()
        elif out is not frame:
            out[...] = frame
        try:
            g = MouthGeometry(lm)
        except ValueError:
            return out
        if g.face_h < 24:
            return out  # face too small to render anything meaningful
        gap_target = float(np.clip(open_, 0.0, 1.0)) * self.max_gap * self.strength * g.face_h
        D = gap_target - g.gap0
        D = max(D, -g.gap0)
        if abs(D) < 0.05 and abs(width) < 0.02 and g.gap0 < 0.05:
            return out
        U = 0.16 * max(D, 0.0)
        r = -0.07 * float(np.clip(width, -1.0, 1.0)) * min(1.0, 0.3 + open_)

        x0, y0, x1, y1 = self.roi(g, D, frame.shape)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return out
        src = frame[y0:y1, x0:x1]
        hh, ww = src.shape[:2]
        # smooth fields are computed on a coarse grid (every `step` pixels) and
        # upsampled; only the edges (lip line, cavity) are evaluated per pixel
        step = 1 if g.face_h < 140 else 2
        eu = g.eu.astype(np.float32)
        ev = g.ev.astype(np.float32)
        ox = np.float32(g.origin[0] - x0)
        oy = np.float32(g.origin[1] - y0)
        hc, wc = -(-hh // step), -(-ww // step)
        off = 0.5 * (step - 1)  # coarse sample j sits at fine coordinate step*j + off
        cx = np.arange(wc, dtype=np.float32) * step + np.float32(off)
        cy = np.arange(hc, dtype=np.float32) * step + np.float32(off)
        f = self._fields(g, cx, cy, ww, hh, ox, oy, eu, ev, gap_target, D, U, r)
        if step > 1:
            f = {k: cv2.resize(a, (ww, hh), interpolation=cv2.INTER_LINEAR) for k, a in f.items()}
        # exact per-pixel v (linear in x, y)
        X = np.arange(ww, dtype=np.float32) - ox
        Y = np.arange(hh, dtype=np.float32) - oy
        v = X[None, :] * ev[0] + Y[:, None] * ev[1]

        warped = cv2.remap(src, f["mx_up"], f["my_up"], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # the lower part (lip, chin) with an anti-aliased edge along b
        b = f["b"]
        a_low = np.clip(v - b + 0.5, 0.0, 1.0)
        rows = np.nonzero(a_low.max(axis=1) > 0)[0]
        if len(rows):
            sl = slice(rows[0], None)
            low = cv2.remap(src, f["mx_low"][sl], f["my_low"][sl], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
            al = a_low[sl][..., None]
            part = warped[sl].astype(np.float32)
            warped[sl] = (part + (low.astype(np.float32) - part) * al + 0.5).astype(np.uint8)

        if gap_target > 0.5:
            warped = self._paint_cavity(warped, g, f["su"], v, f["t"], b, f["vlo"], f["vup"], D, open_)
        out[y0:y1, x0:x1] = warped
        return out

    def _fields(self, g, cx, cy, ww, hh, ox, oy, eu, ev, gap_target, D, U, r):
        """Smooth warp fields at the sample positions cx (columns) x cy (rows) of the ROI."""
        X = cx[None, :] - ox
        Y = cy[:, None] - oy
        u = X * eu[0] + Y * eu[1]
        v = X * ev[0] + Y * ev[1]
        # taper to zero at the ROI border (seamless even when the ROI is clipped)
        bx = np.minimum(cx, np.float32(ww - 1) - cx)
        by = np.minimum(cy, np.float32(hh - 1) - cy)
        border = _smoothstep(np.minimum(by[:, None], bx[None, :]) / np.float32(6.0))

        a_in = np.float32(g.half_w_in)
        chin = np.float32(max(g.chin_v, 1.0))
        nose = np.float32(min(g.nose_v, -1.0))

        # horizontal: round/spread around the lips
        lip_top = float(np.interp(0.0, *g.out_up))
        lip_bot = float(np.interp(0.0, *g.out_lo)) + max(D, 0.0)
        vw = np.where(v < lip_top, _smoothstep((v - nose) / np.float32(max(lip_top - nose, 1.0))),
                      np.where(v > lip_bot,
                               1.0 - _smoothstep((v - lip_bot) / np.float32(max(chin - lip_bot, 1.0))),
                               np.float32(1.0)))
        wh = _profile(u / np.float32(1.6 * g.half_w)) * vw * border
        su = u * (np.float32(1.0) + np.float32(r) * wh)

        # split line (source lower inner lip) and the lip-line profile
        vlo = np.interp(su, *g.in_lo).astype(np.float32)
        vup = np.interp(su, *g.in_up).astype(np.float32)
        glip = _profile((su - np.float32(g.u_in_c)) / a_in)
        # local drop of the lower lip's inner edge: the gap to the upper lip becomes
        # gap_target * profile (so a closing target also closes the corners)
        gap_local = np.maximum(vlo - vup, np.float32(0.0))
        d_lip = np.float32(gap_target) * glip - gap_local
        b = vlo + d_lip * border                          # dest edge of the lower lip
        t = vlo - np.float32(U) * glip * border          # dest edge of the upper part

        # lower part: the lip edge moves by d_lip; deeper down the jaw moves by D with a
        # profile widening towards the chin and fading under it
        fall = np.float32(max(0.45 * float(chin), 2.5 * abs(D)))
        vdown = 1.0 - _smoothstep((v - chin) / fall)
        wdepth = a_in * (1.0 + 0.6 * _smoothstep(v / chin))
        g_low = _profile(su / wdepth) * vdown
        thick = np.float32(max(float(np.interp(0.0, *g.out_lo)) - float(np.interp(0.0, *g.in_lo)), 2.0))
        w1 = 1.0 - _smoothstep((v - vlo) / thick)
        disp_low = (d_lip * w1 + np.float32(D) * g_low * (1.0 - w1)) * border
        sv_low = v - disp_low
        # upper part: small raise fading to the nose
        g_up = _profile(su / a_in) * _smoothstep(1.0 - (v / nose)) * border
        sv_up = v + np.float32(U) * g_up

        mx = ox + su * eu[0]
        my = oy + su * eu[1]
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        return {"mx_up": f32(mx + sv_up * ev[0]), "my_up": f32(my + sv_up * ev[1]),
                "mx_low": f32(mx + sv_low * ev[0]), "my_low": f32(my + sv_low * ev[1]),
                "b": f32(b), "t": f32(t), "su": f32(su), "vlo": f32(vlo), "vup": f32(vup)}

    def _paint_cavity(self, img, g: MouthGeometry, su, v, t, b, vlo, vup, D, open_):
        h = np.maximum(b - t, 1e-3)
        # anti-aliased coverage of the opening
        cov = np.clip(v - t + 0.5, 0.0, 1.0) * np.clip(b - v + 0.5, 0.0, 1.0)
        a_in = float(g.half_w_in)
        cov = cov * (np.abs(su) < a_in * 1.05)
        if not np.any(cov > 0):
            return img
        ys, xs = np.nonzero(cov > 0)
        ya, yb = max(0, ys.min() - 3), ys.max() + 4
        xa, xb = max(0, xs.min() - 3), xs.max() + 4
        sl = (slice(ya, yb), slice(xa, xb))
        cov = cov[sl]; su_ = su[sl]; v_ = v[sl]; t_ = t[sl]; b_ = b[sl]; h_ = h[sl]
        vlo_ = vlo[sl]; vup_ = vup[sl]
        base = img[sl].astype(np.float32)

        yrel = np.clip((v_ - t_) / h_, 0.0, 1.0)
        xrel = np.clip(np.abs(su_) / a_in, 0.0, 1.0)
        # interior: darker towards the back (middle height) and the corners
        depth = 1.0 - 0.55 * np.sin(np.pi * yrel) * (1.0 - xrel ** 2)
        col = _DEEP + (_DARK - _DEEP) * depth[..., None]
        col = col * (1.0 - 0.35 * xrel[..., None] ** 2)

        fh = g.face_h
        gap = float(D + g.gap0)
        # tongue: on wide openings, low in the mouth
        if gap > 0.04 * fh:
            tw = np.clip((gap - 0.04 * fh) / (0.05 * fh), 0.0, 1.0) * 0.55
            tmask = _smoothstep((yrel - 0.55) / 0.35) * (1.0 - _smoothstep((xrel - 0.45) / 0.4)) * tw
            col = col + (_TONGUE - col) * tmask[..., None]

        # upper teeth under the upper lip (less if the template already shows teeth)
        existing = np.maximum(vlo_ - vup_, 0.0)
        teeth_h = np.maximum(0.05 * fh - existing, 0.0) * np.clip(gap / (0.025 * fh), 0.0, 1.0)
        teeth_h = np.minimum(teeth_h, 0.45 * h_)
        if np.any(teeth_h > 0.5):
            dy = v_ - t_
            tm = np.clip(teeth_h - dy + 0.5, 0.0, 1.0) * (1.0 - _smoothstep((xrel - 0.55) / 0.35))
            shade = (0.92 - 0.35 * xrel ** 2 - 0.12 * np.clip(dy / np.maximum(teeth_h, 1.0), 0, 1))
            tooth_w = max(a_in * 0.26, 2.0)
            sep = 1.0 - 0.18 * np.exp(-((np.mod(su_ + tooth_w / 2, tooth_w) - tooth_w / 2) ** 2) / 0.8)
            teeth = _TEETH * (shade * sep)[..., None]
            col = col + (teeth - col) * tm[..., None]

        # soft shadow just inside the lips
        d_edge = np.minimum(v_ - t_, b_ - v_)
        col = col * (0.75 + 0.25 * np.clip(d_edge / 2.5, 0.0, 1.0))[..., None]

        outv = base + (col - base) * cov[..., None]
        # a little shadow on the lips right next to the opening
        d_out = np.where(v_ < t_, t_ - v_, np.where(v_ > b_, v_ - b_, 0.0))
        near = (1.0 - cov) * np.exp(-d_out / 1.5) * (1.0 - _smoothstep((xrel - 0.7) / 0.3)) \
            * np.clip(D / 3.0, 0, 1)
        outv = outv * (1.0 - 0.18 * near)[..., None]
        img = img.copy() if not img.flags.writeable else img
        img[sl] = np.clip(outv, 0, 255).astype(np.uint8)
        return img
