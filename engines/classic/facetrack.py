"""Face and lip tracking with mediapipe's face mesh, and the face-track cache.

mediapipe 0.10.21 ships the face detection and face landmark models inside the
wheel, so nothing is downloaded.  Tracking runs the mesh on a small crop around
the previous face (downscaled to at most 192 px (the landmark model's input size)), which costs the same few
milliseconds for any frame size.  When the face is lost (or on the first frame)
the whole frame is searched for up to four faces and the largest, most central
one is chosen - or, when re-acquiring, the one nearest to where the face was.
"""
from __future__ import annotations

import os
import sys
import tempfile

import cv2

import numpy as np

# --- landmark subset kept per frame (indices into the 468-point mesh) ----------
LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
JAW = [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454]
OTHER = [10, 1, 2, 164, 33, 133, 362, 263, 168]

SUBSET = sorted(set(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER + LIPS_INNER_LOWER + JAW + OTHER))
_POS = {m: k for k, m in enumerate(SUBSET)}


def idx(mesh_ids) -> np.ndarray:
    """Positions in the subset array of the given mesh landmark ids."""
    if isinstance(mesh_ids, int):
        return _POS[mesh_ids]
    return np.array([_POS[m] for m in mesh_ids], dtype=np.int64)


CACHE_VERSION = 2
_SUBSET_ARR = np.array(SUBSET, dtype=np.int64)


def _box(pts: np.ndarray):
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


class _Mesh:
    """A mediapipe FaceMesh graph (created once per worker)."""

    def __init__(self, static: bool, max_faces: int):
        from mediapipe.python.solutions import face_mesh

        self._m = face_mesh.FaceMesh(static_image_mode=static, max_num_faces=max_faces,
                                     refine_landmarks=False, min_detection_confidence=0.5,
                                     min_tracking_confidence=0.5)
        self._direct = _direct_ok(self._m)

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces as (468, 2) arrays in normalised [0, 1] coordinates."""
        if self._direct:
            return [_xy(b) for b in self._process_serialized(rgb)]
        res = self._m.process(rgb)
        if not res.multi_face_landmarks:
            return []
        return [_xy(f.SerializeToString()) for f in res.multi_face_landmarks]

    def _process_serialized(self, rgb: np.ndarray) -> list[bytes]:
        """What FaceMesh.process does (same packet, same timestamps, same graph), minus the
        per-call cost of its result object: it builds a namedtuple class and parses every
        face into protobuf messages (~0.5 ms a call, twice per frame), where the serialised
        landmark lists are all `_xy` needs."""
        from mediapipe.python import packet_getter

        m = self._m
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("Input image must contain three channel rgb data.")
        m._graph_outputs.clear()
        m._simulated_timestamp += 33333
        m._graph.add_packet_to_input_stream(
            stream="image", packet=m._make_packet(m._input_stream_type_info["image"], rgb).at(m._simulated_timestamp))
        m._graph.wait_until_idle()
        packet = m._graph_outputs.get("multi_face_landmarks")
        if packet is None or packet.is_empty():
            return []
        return list(packet_getter._packet_getter._get_serialized_proto_list(packet))


def _direct_ok(solution) -> bool:
    """Whether `solution` is the mediapipe SolutionBase `_Mesh._process_serialized` was written
    against (0.10.x); any other version takes the public `process`."""
    try:
        from mediapipe.python import packet_getter
        from mediapipe.python.solution_base import PacketDataType

        return (callable(getattr(packet_getter._packet_getter, "_get_serialized_proto_list", None))
                and isinstance(solution._graph_outputs, dict) and isinstance(solution._simulated_timestamp, int)
                and solution._input_stream_type_info == {"image": PacketDataType.IMAGE}
                and solution._output_stream_type_info == {"multi_face_landmarks": PacketDataType.PROTO_LIST}
                and callable(solution._make_packet) and hasattr(solution._graph, "wait_until_idle"))
    except (AttributeError, ImportError):
        return False


# One NormalizedLandmark as mediapipe serialises it: field 1 (the landmark, length 15) holding
# x, y, z as fixed32 floats (tags 0x0d, 0x15, 0x1d) - 17 bytes, the same for every landmark.
_WIRE = np.dtype([("tag", "u1"), ("len", "u1"), ("tx", "u1"), ("x", "<f4"), ("ty", "u1"), ("y", "<f4"),
                  ("tz", "u1"), ("z", "<f4")])
assert _WIRE.itemsize == 17


def _xy(serialized: bytes) -> np.ndarray:
    """(n, 2) float32 x, y of a serialised NormalizedLandmarkList.

    Reading 468 protobuf messages attribute by attribute costs ~0.25 ms a face, twice per
    frame; the list's wire form is a fixed 17-byte record per landmark, read here by numpy
    in a few microseconds.  Any other layout (e.g. a landmark with visibility set) is parsed
    as a message, so the values are the same either way."""
    if serialized and len(serialized) % _WIRE.itemsize == 0:
        r = np.frombuffer(serialized, _WIRE)
        if ((r["tag"] == 0x0A) & (r["len"] == 15) & (r["tx"] == 0x0D) & (r["ty"] == 0x15)
                & (r["tz"] == 0x1D)).all():
            out = np.empty((len(r), 2), np.float32)
            out[:, 0] = r["x"]
            out[:, 1] = r["y"]
            return out
    from mediapipe.framework.formats import landmark_pb2

    lms = landmark_pb2.NormalizedLandmarkList.FromString(serialized)
    return np.array([(p.x, p.y) for p in lms.landmark], dtype=np.float32).reshape(-1, 2)


def _crop_rect(box, w: int, h: int, factor: float):
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    side = max(box[2] - box[0], box[3] - box[1]) * factor
    x0 = int(round(cx - side / 2)); y0 = int(round(cy - side / 2))
    x1 = int(round(cx + side / 2)); y1 = int(round(cy + side / 2))
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


class FaceTracker:
    """Per-frame face landmarks of one consistent face.

    ``track(frame)`` returns the landmark subset (len(SUBSET), 2) in pixels, or
    None when no face is found in this frame.
    """

    CROP_SIDE = 192
    DETECT_SIDE = 640

    def __init__(self):
        self._tracker = _Mesh(static=False, max_faces=1)
        self._finder = _Mesh(static=True, max_faces=4)
        self.reset()

    def reset(self):
        self.prev_box = None
        self.last_box = None  # where the face was last seen (for re-acquiring)

    # full-frame search -----------------------------------------------------------
    def _detect(self, frame: np.ndarray):
        h, w = frame.shape[:2]
        s = min(1.0, self.DETECT_SIDE / max(w, h))
        img = frame if s >= 1.0 else cv2.resize(frame, (int(round(w * s)), int(round(h * s))),
                                                 interpolation=cv2.INTER_LINEAR)
        faces = self._finder.faces(np.ascontiguousarray(img))
        if not faces:
            return None
        best, best_score = None, -1e18
        diag = float(np.hypot(w, h))
        for f in faces:
            pts = f * np.array([w, h], np.float32)
            b = _box(pts)
            area = (b[2] - b[0]) * (b[3] - b[1])
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if self.last_box is not None:
                lx, ly = (self.last_box[0] + self.last_box[2]) / 2, (self.last_box[1] + self.last_box[3]) / 2
                score = -np.hypot(cx - lx, cy - ly) + 0.25 * np.sqrt(area)
            else:
                centrality = 1.0 - np.hypot(cx - w / 2, cy - h / 2) / (diag / 2)
                score = area * (0.35 + centrality)
            if score > best_score:
                best, best_score = pts, score
        return best

    def track_full(self, frame: np.ndarray):
        """468 landmarks in pixels, or None."""
        h, w = frame.shape[:2]
        pts = None
        if self.prev_box is not None:
            x0, y0, x1, y1 = _crop_rect(self.prev_box, w, h, 1.7)
            if x1 - x0 >= 32 and y1 - y0 >= 32:
                crop = frame[y0:y1, x0:x1]
                cw, ch = x1 - x0, y1 - y0
                s = min(1.0, self.CROP_SIDE / max(cw, ch))
                if s < 1.0:
                    crop = cv2.resize(crop, (max(1, int(round(cw * s))), max(1, int(round(ch * s)))),
                                      interpolation=cv2.INTER_LINEAR)
                faces = self._tracker.faces(np.ascontiguousarray(crop))
                if faces:
                    cand = faces[0] * np.array([cw, ch], np.float32) + np.array([x0, y0], np.float32)
                    if _iou(_box(cand), self.prev_box) > 0.3:
                        pts = cand
        if pts is None:
            pts = self._detect(frame)
        if pts is None:
            if self.prev_box is not None:
                self.last_box = self.prev_box
            self.prev_box = None
            return None
        self.prev_box = _box(pts)
        self.last_box = self.prev_box
        return pts

    def track(self, frame: np.ndarray):
        pts = self.track_full(frame)
        return None if pts is None else pts[_SUBSET_ARR].copy()


class ApertureMeter:
    """Measures mouth aperture (inner-lip gap / face height) on rendered frames."""

    CROP_SIDE = 192

    def __init__(self):
        self._mesh = _Mesh(static=False, max_faces=1)

    def measure(self, frame: np.ndarray, hint: np.ndarray | None):
        """`hint`: landmark subset of this frame's face in the template (crop guide)."""
        h, w = frame.shape[:2]
        if hint is not None:
            x0, y0, x1, y1 = _crop_rect(_box(hint), w, h, 1.7)
        else:
            x0, y0, x1, y1 = 0, 0, w, h
        crop = frame[y0:y1, x0:x1]
        cw, ch = x1 - x0, y1 - y0
        if cw < 16 or ch < 16:
            return None
        s = min(1.0, self.CROP_SIDE / max(cw, ch))
        if s < 1.0:
            crop = cv2.resize(crop, (max(1, int(round(cw * s))), max(1, int(round(ch * s)))),
                              interpolation=cv2.INTER_LINEAR)
        faces = self._mesh.faces(np.ascontiguousarray(crop))
        if not faces:
            return None
        f = faces[0] * np.array([cw, ch], np.float32)
        return aperture_of(f)


def aperture_of(pts468: np.ndarray) -> float:
    gap = float(np.linalg.norm(pts468[14] - pts468[13]))
    face_h = float(np.linalg.norm(pts468[152] - pts468[10]))
    return gap / face_h if face_h > 1e-6 else 0.0


# --- cache ---------------------------------------------------------------------
class TrackCache:
    """Landmark subset per template frame, stored as cache_dir/facetrack-v2-<video_key>.npz.

    ``complete`` means the whole template was analysed (its frame count is known).
    """

    def __init__(self, width: int, height: int, fps: float):
        self.width, self.height, self.fps = width, height, fps
        self.lm = np.zeros((0, len(SUBSET), 2), np.float32)
        self.valid = np.zeros(0, bool)
        self.complete = False
        self.dirty = False
        self._n = 0

    def __len__(self):
        return self._n

    def get(self, i: int):
        if i < self._n and self.valid[i]:
            return self.lm[i]
        return None

    def has(self, i: int) -> bool:
        return i < self._n

    def append(self, i: int, pts):
        assert i == self._n, (i, self._n)
        if self._n >= len(self.valid):
            cap = max(256, 2 * len(self.valid))
            lm = np.zeros((cap, len(SUBSET), 2), np.float32)
            lm[:self._n] = self.lm[:self._n]
            va = np.zeros(cap, bool)
            va[:self._n] = self.valid[:self._n]
            self.lm, self.valid = lm, va
        if pts is not None:
            self.lm[i] = pts
            self.valid[i] = True
        self._n += 1
        self.dirty = True

    @staticmethod
    def path(cache_dir: str, video_key: str) -> str:
        safe = "".join(c for c in video_key if c.isalnum() or c in "-_.")[:128] or "unnamed"
        return os.path.join(cache_dir, f"facetrack-v{CACHE_VERSION}-{safe}.npz")

    @classmethod
    def load(cls, path: str, width: int, height: int, fps: float):
        try:
            with np.load(path) as z:
                meta = z["meta"]
                if (int(meta[0]) != CACHE_VERSION or int(meta[1]) != width or int(meta[2]) != height
                        or abs(float(meta[3]) - fps) > 1e-3 or int(meta[5]) != len(SUBSET)):
                    return None
                c = cls(width, height, fps)
                c.lm = z["lm"].astype(np.float32)
                c.valid = z["valid"].astype(bool)
                c._n = len(c.valid)
                c.complete = bool(int(meta[4]))
                c.dirty = False
                return c
        except (OSError, KeyError, ValueError, IndexError, EOFError):
            return None

    def keep(self, path: str | None, template_frames: int | None, who: str) -> None:
        """Save what was learnt about the template, even from a failed item: complete once
        every one of its `template_frames` frames is known. A failed save only costs time."""
        if not path or not self.dirty:
            return
        if template_frames is not None and len(self) >= template_frames:
            self.complete = True
        try:
            self.save(path)
        except OSError as e:
            print(f"{who}: cannot save the face track cache: {e}", file=sys.stderr, flush=True)

    def save(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        meta = np.array([CACHE_VERSION, self.width, self.height, self.fps, int(self.complete), len(SUBSET)],
                        np.float64)
        fd, tmp = tempfile.mkstemp(prefix=".facetrack-", suffix=".npz", dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=meta, lm=self.lm[:self._n], valid=self.valid[:self._n])
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.dirty = False
