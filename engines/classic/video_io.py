"""Video in and out through ffmpeg pipes (constant memory for any length).

* :func:`probe` reads size, frame rate and rotation with ffprobe.
* :class:`FrameSource` yields ``(source_index, frame)`` for every output frame:
  the template forward, then (if the audio is longer) backward, forward, ... -
  a ping-pong loop with no jump.  Forward passes stream one ffmpeg decoder;
  backward passes decode chunks of frames with an accurate seek and play each
  chunk in reverse, so memory is bounded by one chunk (~64 MB) at any length.
* :class:`Encoder` pipes RGB frames into ffmpeg (libx264, yuv420p) and muxes the
  narration (AAC) with ``+faststart``; the result is cut to the audio length.

All ffmpeg children stay in the worker's process group, so the runner's group
kill takes them down too.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np


class InputError(Exception):
    """The item's inputs are at fault (not retried automatically)."""


class TransientError(Exception):
    """Anything else (retried)."""


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames_hint: int  # from the container; may be 0 or approximate
    duration: float

    @property
    def fps_float(self) -> float:
        return float(self.fps)


def _parse_rate(s: str | None) -> Fraction | None:
    if not s or s in ("0/0", "0"):
        return None
    try:
        f = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if f <= 0 or f > 240:
        return None
    return f.limit_denominator(100000)


def probe(path: str) -> VideoInfo:
    if not os.path.isfile(path):
        raise InputError(f"template not found: {path}")
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0",
           "-show_entries", "stream=width,height,r_frame_rate,avg_frame_rate,nb_frames,duration:"
                            "stream_tags=rotate:stream_side_data=rotation:format=duration",
           "-of", "json", path]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise InputError(f"cannot read the template {os.path.basename(path)}: {p.stderr.strip()[:300]}")
    try:
        j = json.loads(p.stdout or "{}")
    except ValueError:
        raise InputError(f"cannot read the template {os.path.basename(path)}")
    streams = j.get("streams") or []
    if not streams:
        raise InputError(f"the template {os.path.basename(path)} has no video stream")
    s = streams[0]
    w, h = int(s.get("width") or 0), int(s.get("height") or 0)
    if w <= 0 or h <= 0:
        raise InputError(f"the template {os.path.basename(path)} has no picture size")
    rot = 0
    try:
        rot = int(float((s.get("tags") or {}).get("rotate", 0)))
    except ValueError:
        rot = 0
    for sd in s.get("side_data_list") or []:
        if "rotation" in sd:
            try:
                rot = int(float(sd["rotation"]))
            except ValueError:
                pass
    if abs(rot) % 180 == 90:
        w, h = h, w  # ffmpeg auto-rotates while decoding
    fps = _parse_rate(s.get("avg_frame_rate")) or _parse_rate(s.get("r_frame_rate")) or Fraction(25)
    dur = 0.0
    for v in (s.get("duration"), (j.get("format") or {}).get("duration")):
        try:
            dur = float(v)
            break
        except (TypeError, ValueError):
            continue
    try:
        nb = int(s.get("nb_frames") or 0)
    except ValueError:
        nb = 0
    if nb <= 0 and dur > 0:
        nb = int(round(dur * float(fps)))
    return VideoInfo(w, h, fps, nb, dur)


def _fps_arg(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


class _Decoder:
    """One ffmpeg process writing raw RGB frames to a pipe."""

    def __init__(self, path: str, info: VideoInfo, start_frame: int = 0, max_frames: int | None = None):
        self.info = info
        # even sizes travel as yuv420p (half the bytes; cv2 converts faster than swscale)
        self.yuv = info.width % 2 == 0 and info.height % 2 == 0
        self.frame_bytes = info.width * info.height * 3 // (2 if self.yuv else 1)
        # one decoding thread: it still decodes several times faster than the engine renders,
        # and frame threading only adds CPU (~0.07 s per 250 frames at 512x512) on a machine the
        # engine's own threads and x264 already keep busy; the frames are the same either way
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1"]
        if start_frame > 0:
            # accurate seek (decode from the keyframe before, drop up to the frame);
            # a quarter frame early so rounding never skips the wanted frame
            t = (start_frame - 0.25) / float(info.fps)
            cmd += ["-ss", f"{t:.6f}"]
        cmd += ["-i", path, "-map", "0:v:0", "-an", "-sn", "-dn",
                "-vf", f"fps={_fps_arg(info.fps)},scale={info.width}:{info.height}"]
        if max_frames is not None:
            cmd += ["-frames:v", str(max_frames)]
        cmd += ["-f", "rawvideo", "-pix_fmt", "yuv420p" if self.yuv else "rgb24", "-"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, bufsize=0)
        self._err = []
        self._errt = threading.Thread(target=self._drain, daemon=True)
        self._errt.start()

    def _drain(self):
        for line in self.proc.stderr:
            if len(self._err) < 50:
                self._err.append(line.decode("utf-8", "replace").rstrip())

    def read(self):
        buf = bytearray(self.frame_bytes)
        view = memoryview(buf)
        got = 0
        while got < self.frame_bytes:
            n = self.proc.stdout.readinto(view[got:])
            if not n:
                break
            got += n
        if got < self.frame_bytes:
            return None
        w, h = self.info.width, self.info.height
        if self.yuv:
            return cv2.cvtColor(np.frombuffer(buf, np.uint8).reshape(h * 3 // 2, w), cv2.COLOR_YUV2RGB_I420)
        return np.frombuffer(buf, np.uint8).reshape(h, w, 3)

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.proc.stdout.close()
            except OSError:
                pass
            self.proc.terminate()
        rc = self.proc.wait()
        self._errt.join(timeout=2)
        return rc

    def finish(self) -> tuple[int, str]:
        """Wait for a decoder that reached EOF; returns (exit code, stderr text)."""
        rc = self.proc.wait()
        self._errt.join(timeout=2)
        return rc, "\n".join(self._err)


def pingpong_index(k: int, n: int) -> int:
    """Source frame of output frame k for a template of n frames (forward, back, ...)."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    m = k % period
    return m if m < n else period - m


class FrameSource:
    """Iterates ``(src_index, frame)`` for `total` output frames (see module doc)."""

    def __init__(self, path: str, info: VideoInfo, total: int, known_frames: int | None = None,
                 chunk_bytes: int = 64 << 20):
        self.path, self.info, self.total = path, info, total
        self.n = known_frames  # template frame count once known
        self.chunk = max(4, min(120, chunk_bytes // (info.width * info.height * 3)))

    def __iter__(self):
        k = 0
        total = self.total
        # first forward pass: discovers the frame count
        dec = _Decoder(self.path, self.info, 0, max_frames=total)
        i = 0
        eof = False
        try:
            while k < total:
                f = dec.read()
                if f is None:
                    eof = True
                    break
                yield i, f
                i += 1
                k += 1
        finally:
            if not eof:  # done, or closed early (the item failed): stop the decoder
                dec.close()
        if k >= total:
            return
        rc, err = dec.finish()
        if i == 0:
            if rc != 0:
                raise InputError(f"cannot decode the template {os.path.basename(self.path)}: {err[:300]}")
            raise InputError(f"the template {os.path.basename(self.path)} has no frames")
        if rc != 0:
            raise TransientError(f"ffmpeg failed decoding the template: {err[:300]}")
        n = i
        self.n = n
        # further passes: backward n-2 .. 1, forward 0 .. n-1, ...
        if n == 1:
            d = _Decoder(self.path, self.info, 0, max_frames=1)
            f = d.read()
            d.close()
            if f is None:
                raise TransientError("the template could not be decoded again")
            while k < total:
                yield 0, f
                k += 1
            return
        period = 2 * (n - 1)
        while k < total:
            m = k % period
            if m < n:
                start = m
                count = min(n - start, total - k)
                d = _Decoder(self.path, self.info, start, max_frames=count)
                try:
                    for j in range(count):
                        f = d.read()
                        if f is None:
                            raise TransientError(f"the template ended early at frame {start + j}")
                        yield start + j, f
                        k += 1
                finally:
                    d.close()
            else:
                top = period - m
                bottom = max(1, top - (total - k) + 1)
                while top >= bottom:
                    lo = max(bottom, top - self.chunk + 1)
                    count = top - lo + 1
                    d = _Decoder(self.path, self.info, lo, max_frames=count)
                    frames = []
                    try:
                        for j in range(count):
                            f = d.read()
                            if f is None:
                                break
                            frames.append(f)
                    finally:
                        d.close()
                    if len(frames) < count:
                        raise TransientError(f"the template ended early at frame {lo + len(frames)}")
                    for j in range(count - 1, -1, -1):
                        yield lo + j, frames[j]
                        k += 1
                    frames = None
                    top = lo - 1


class Encoder:
    """Pipes RGB frames into ffmpeg, muxing the narration; writes `output` on close."""

    def __init__(self, output: str, audio: str, width: int, height: int, fps: Fraction, duration: float,
                 preset: str = "veryfast", crf: int = 20):
        self.output = output
        self.tmp = output + ".part.mp4"
        vf = []
        self.yuv = width % 2 == 0 and height % 2 == 0
        if not self.yuv:
            vf = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "yuv420p" if self.yuv else "rgb24", "-s", f"{width}x{height}",
               "-r", _fps_arg(fps), "-i", "-",
               "-i", audio,
               "-map", "0:v:0", "-map", "1:a:0", *vf,
               "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-b:a", "128k",
               "-t", f"{duration:.6f}", "-movflags", "+faststart", "-f", "mp4", self.tmp]
        d = os.path.dirname(output)
        if d:
            os.makedirs(d, exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, bufsize=0)
        self._err = []
        self._errt = threading.Thread(target=self._drain, daemon=True)
        self._errt.start()

    def _drain(self):
        for line in self.proc.stderr:
            if len(self._err) < 50:
                self._err.append(line.decode("utf-8", "replace").rstrip())

    def write(self, frame: np.ndarray):
        try:
            if self.yuv:
                frame = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
            self.proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, OSError):
            self.proc.wait()
            raise TransientError("ffmpeg encoder stopped: " + " | ".join(self._err[-5:]))

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait()
        self._errt.join(timeout=2)
        if rc != 0:
            self._remove_tmp()
            raise TransientError(f"ffmpeg encoder failed (exit {rc}): " + " | ".join(self._err[-5:]))
        os.replace(self.tmp, self.output)

    def abort(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._remove_tmp()

    def _remove_tmp(self):
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
