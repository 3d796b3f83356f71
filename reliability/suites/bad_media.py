"""Bad (and awkward but good) inputs for the bad_inputs suite, made on the spot with ffmpeg
and Python; nothing is downloaded.

Plain media uses only the standard library and ffmpeg. The face templates (a face, no face,
two faces, a face that leaves the frame, an odd frame size) are drawn from scikit-image's
public-domain astronaut photo, so they need the engines' environment:

    .venv/bin/python reliability/suites/bad_media.py faces OUT_DIR [KIND ...]

writes OUT_DIR/<kind>.mp4 for the given face kinds (default: all of FACE_KINDS).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

FPS = 25


def ffmpeg(*args: str, timeout: float = 120) -> None:
    """Runs ffmpeg quietly; raises with its stderr when it fails."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", *args]
    target = args[-1]
    if target.startswith("file:"):  # every output is named last, as file:PATH
        Path(target[5:]).parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args[-3:])} failed: {result.stderr.decode(errors='replace')[-400:]}")


def _x264(path: Path, *extra: str) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", *extra, "-f", "mp4", "file:" + str(path)]


def video(path: Path, seconds: float = 1.0, size: str = "160x120", hue: int = 0, faststart: bool = False,
          audio: bool = False) -> Path:
    """A small H.264 test-pattern video; `hue` makes distinct content."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}", "-c:a", "aac"]
    args += ["-vf", f"hue=h={hue % 360}", "-pix_fmt", "yuv420p"]
    if faststart:
        args += ["-movflags", "+faststart"]
    ffmpeg(*args, *_x264(path))
    return path


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated(path: Path, fraction: float, faststart: bool, hue: int) -> Path:
    """An MP4 cut after `fraction` of its bytes, as a broken download leaves it. Without
    faststart the index (moov) is at the end and is lost; with it, the index survives and
    promises frames that are not there."""
    whole = path.with_name(path.name + ".whole")
    video(whole, seconds=2.0, hue=hue, faststart=faststart)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    return path


def png_named_mp4(path: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "1", "-c:v", "png", "-f", "image2",
           "file:" + str(path))
    return path


def text_named_mp4(path: Path) -> Path:
    path.write_text("This is a shopping list, not a video.\nmilk\neggs\n")
    return path


def audio_only_mp4(path: Path, seconds: float = 2.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-f", "mp4", "file:" + str(path))
    return path


def variable_frame_rate(path: Path) -> Path:
    """Frames at irregular intervals (as phones record in low light): 30 fps source with
    an irregular pattern of dropped frames, timestamps kept."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=2",
           "-vf", "select='lt(mod(n\\,10)\\,4)+eq(mod(n\\,7)\\,0)',hue=h=200", "-vsync", "vfr",
           "-pix_fmt", "yuv420p", *_x264(path))
    return path


def rotated(path: Path) -> Path:
    """A phone video: stored 240x136 landscape with a 90° display rotation (portrait)."""
    plain = path.with_name(path.name + ".plain.mp4")
    video(plain, seconds=1.0, size="240x136", hue=120)
    ffmpeg("-i", "file:" + str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", "-f", "mp4", "file:" + str(path))
    plain.unlink()
    return path


def uhd(path: Path, seconds: float = 1.0) -> Path:
    """3840x2160 (4K UHD)."""
    return video(path, seconds=seconds, size="3840x2160", hue=300)


def tiny(path: Path) -> Path:
    """8x8 pixels: no face can be in it."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=8x8:rate={FPS}:duration=1", "-pix_fmt", "yuv444p", *_x264(path))
    return path


def single_frame(path: Path) -> Path:
    """An MP4 with one frame (0.04 s)."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={FPS}", "-frames:v", "1", "-pix_fmt", "yuv420p", *_x264(path))
    return path


def vp9_webm(path: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={FPS}:duration=1", "-vf", "hue=h=60",
           "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "-f", "webm",
           "file:" + str(path))
    return path


# ---------------------------------------------------------------------------------------
# Narrations


def tone(path: Path, seconds: float, rate: int = 16000) -> Path:
    """A WAV of a 220 Hz tone (a stand-in for a voice where words do not matter)."""
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=220:sample_rate={rate}:duration={seconds}", "-ac", "1",
           "-c:a", "pcm_s16le", "-f", "wav", "file:" + str(path))
    return path


def silence(path: Path, seconds: float) -> Path:
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(seconds), "-c:a", "pcm_s16le", "-f", "wav",
           "file:" + str(path))
    return path


def long_narration(path: Path, hours: float, cache: Path) -> Path:
    """A narration of `hours` hours, made cheaply: ten minutes of quiet low-rate AAC,
    stream-copied end to end (no encoding of the whole length). About 1 MB per hour."""
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"narration-{hours:g}h.m4a"
    if not cached.exists():
        piece = cache / "narration-10min.m4a"
        if not piece.exists():
            temp = cache / f"narration-10min.tmp{os.getpid()}.m4a"
            ffmpeg("-f", "lavfi", "-i", "sine=frequency=200:sample_rate=8000:duration=600", "-af", "volume=0.05",
                   "-c:a", "aac", "-b:a", "8k", "-ac", "1", "-f", "mp4", "file:" + str(temp))
            temp.rename(piece)
        loops = max(1, int(round(hours * 6)))
        temp = cache / f"narration-{hours:g}h.tmp{os.getpid()}.m4a"
        ffmpeg("-stream_loop", str(loops - 1), "-i", "file:" + str(piece), "-c", "copy", "-f", "mp4", "file:" + str(temp))
        temp.rename(cached)
    shutil.copyfile(cached, path)
    return path


def truncated_wav(path: Path, seconds: float = 2.0) -> Path:
    """A WAV whose header promises `seconds` but whose data stops at half of it."""
    whole = tone(path.with_name(path.name + ".whole.wav"), seconds)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])
    return path


# ---------------------------------------------------------------------------------------
# Face templates (need numpy, OpenCV and scikit-image: run under the engines' .venv)

FACE_KINDS = ("face", "noface", "two-faces", "face-leaves", "face-leaves-briefly", "odd-size-face")
# Where the face is in the 512x512 astronaut photo (engines/media_samples.py).
FACE_CX, FACE_CY = 225.0, 126.0


def _face_frames(kind: str):
    """(width, height, frames) for a face kind; 256 px frames keep the classic engine fast."""
    import cv2
    import numpy as np
    from skimage import data

    src = np.ascontiguousarray(data.astronaut())

    def view(cx: float, cy: float, scale: float, w: int, h: int):
        m = np.array([[scale, 0.0, w / 2.0 - scale * cx], [0.0, scale, h / 2.0 - scale * cy]])
        # out-of-photo areas are flat grey, so a face panned out of the frame is really gone
        return cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(128, 128, 128))

    def clip(seconds: float, motion, w: int = 256, h: int = 256):
        count = int(round(seconds * FPS))
        return w, h, [view(*motion(i / FPS), w, h) for i in range(count)]

    def still_face(t: float):
        return FACE_CX + 4 * math.sin(2 * math.pi * t), FACE_CY, 1.3

    def pan_out(visible: float, gone: float):
        """Face centred until `visible` s, out of the frame by `visible + 0.4` s; back at `gone` s when given."""
        def motion(t: float):
            if t < visible:
                shift = 0.0
            elif gone and t >= gone:
                shift = max(0.0, 1.0 - (t - gone) / 0.4)
            else:
                shift = min(1.0, (t - visible) / 0.4)
            return FACE_CX - shift * 400.0, FACE_CY, 1.3
        return motion

    if kind == "face":
        return clip(1.2, still_face)
    if kind == "noface":  # the space shuttle model on the right of the photo
        return clip(1.2, lambda t: (415.0 + 5 * t, 150.0, 1.6))
    if kind == "two-faces":
        _, _, frames = clip(1.2, still_face)
        return 512, 256, [np.ascontiguousarray(np.concatenate([f, f[:, ::-1]], axis=1)) for f in frames]
    if kind == "face-leaves":  # out for good after 0.8 s; ping-pong looping doubles the gap past 2 s
        return clip(2.0, pan_out(0.4, 0.0))
    if kind == "face-leaves-briefly":  # out for about 0.3 s, then back
        return clip(1.6, pan_out(0.4, 1.1))
    if kind == "odd-size-face":
        w, h, frames = clip(1.2, still_face, 255, 257)
        return w, h, frames
    raise ValueError(f"unknown face kind {kind}")


def face_template(path: Path, kind: str) -> Path:
    w, h, frames = _face_frames(kind)
    # odd sizes cannot be 4:2:0; 4:4:4 H.264 keeps the odd size as it is
    pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt,
               "-f", "mp4", "file:" + str(path)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = process.communicate(b"".join(frame.tobytes() for frame in frames), timeout=120)
    if process.returncode != 0:
        raise RuntimeError(f"ffmpeg failed making {path.name}: {stderr.decode(errors='replace')[-300:]}")
    return path


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "faces" or not set(argv[2:]) <= set(FACE_KINDS):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for kind in argv[2:] or FACE_KINDS:
        face_template(out / f"{kind}.mp4", kind)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
