"""One render request, end to end, streamed through three threads.

    reader thread   ffmpeg decode -> (output index, template index, frame)
    main thread     face track (or cache) -> mouth render
    writer thread   aperture measurement (score), contact-sheet tiles, ffmpeg encode, progress

Queues between them are short, so memory stays flat whatever the length.
"""
from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time

import numpy as np

import audio as audio_mod
from params import flag, fmt_time, number
from facetrack import ApertureMeter, FaceTracker, TrackCache
from render import MouthRenderer
from score import ContactSheet, lipsync_score
from video_io import Encoder, FrameSource, InputError, TransientError, probe

NO_FACE_SECONDS = 2.0  # a face missing longer than this fails the item (shorter gaps pass through)
# The lip-sync score measures the mouth opening with a second face-mesh pass over the OUTPUT
# frames - as costly as tracking the template.  It is measured on every SCORE_STRIDE-th output
# frame (k % stride == 0) and correlated with the audio envelope at those same frames (the
# others stay NaN and score.pearson leaves them out): the worker runs the mesh 375 instead of
# 500 times per 250 frames on a cold cache, 125 instead of 250 warm.  At 25 fps every 2nd
# frame still samples the mouth at 12.5 Hz, above the syllable rate of speech (~4-6 Hz), so
# a lip-synced render scores the same to within a few thousandths.  What fewer samples do
# change is the chance correlation of a mouth that does NOT follow the audio (it shrinks as
# 1/sqrt(samples)): an untouched 4 s template scored 0.04 on every frame but 0.31 / -0.21 on
# the even / odd ones.  So the stride applies only when it still leaves SCORE_MIN_SAMPLES
# measured frames (5 s at 25 fps); shorter renders measure every frame, as before.
# A request can ask for a stride with params.score_stride (1 = every frame).
SCORE_STRIDE = 2
SCORE_MIN_SAMPLES = 125


def score_stride(total: int) -> int:
    """The default stride of the lip-sync measurement for a render of `total` frames."""
    return SCORE_STRIDE if total >= SCORE_STRIDE * SCORE_MIN_SAMPLES else 1


class Models:
    """Everything heavy, loaded once per worker."""

    def __init__(self):
        self.tracker = FaceTracker()
        self.meter = ApertureMeter()


_END = object()


class _Stop(Exception):
    pass


def render_item(req: dict, models: Models, chan, log=None) -> dict:
    """Render one request; returns {"frames": n, "score": s}. Raises InputError/TransientError."""
    rid = req.get("id")
    t_start = time.monotonic()

    def info_log(msg: str, level: str = "info"):
        chan.log(rid, msg, level)
        print(f"classic[{rid}]: {msg}", file=sys.stderr, flush=True)

    video = req.get("video")
    audio_path = req.get("audio")
    output = req.get("output")
    if not video or not audio_path or not output:
        raise InputError("render request needs video, audio and output")
    params = req.get("params") or {}
    if not isinstance(params, dict):
        params = {}
    cache_dir = req.get("cache_dir")
    video_key = req.get("video_key") or ""

    vinfo = probe(video)
    fps = vinfo.fps_float
    duration = req.get("duration")
    try:
        duration = float(duration)
    except (TypeError, ValueError):
        duration = None
    if not os.path.isfile(audio_path):
        raise InputError(f"audio not found: {audio_path}")
    if duration is None or not (duration > 0):
        try:
            duration = audio_mod.probe_duration(audio_path)
        except audio_mod.AudioError as e:
            raise InputError(str(e))
    if not (duration > 0):
        raise InputError("the audio is empty")
    total = max(1, int(math.ceil(duration * fps - 1e-6)))

    strength = number(params.get("strength", params.get("mouth_strength")), 1.0, 0.0, 2.0)
    renderer = MouthRenderer(strength=strength)
    do_score = flag(params.get("score"), True)
    stride = int(number(params.get("score_stride"), score_stride(total), 1, 100))
    # x264 is the largest single cost: veryfast up to ~0.4 MP, superfast above (HD stays real time)
    default_preset = "veryfast" if vinfo.width * vinfo.height <= 400_000 else "superfast"
    preset = str(params.get("x264_preset", default_preset))
    if preset not in ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"):
        preset = default_preset
    crf = int(number(params.get("crf"), 20, 0, 51))
    want_sheet = flag(params.get("contact_sheet"), False)

    # face track cache ------------------------------------------------------------
    cache = None
    cache_path = None
    if cache_dir and video_key:
        cache_path = TrackCache.path(cache_dir, video_key)
        if os.path.exists(cache_path):
            cache = TrackCache.load(cache_path, vinfo.width, vinfo.height, fps)
        if cache is not None:
            info_log(f"face track cache hit: {len(cache)} frames from {os.path.basename(cache_path)}")
        else:
            info_log("face track cache miss: analysing the template's faces")
    if cache is None:
        cache = TrackCache(vinfo.width, vinfo.height, fps)
    if cache.complete and len(cache) and not cache.valid[:len(cache)].any():
        raise InputError(f"no face found at {fmt_time(0.0)} (the template has no face)")
    cache_start = len(cache)
    models.tracker.reset()

    source = FrameSource(video, vinfo, total, known_frames=len(cache) if cache.complete else None)

    # The audio is analysed on its own thread while the template's decoder and the encoder
    # start: all three are ffmpeg processes whose start-up is waiting more than computing,
    # and one after the other they delayed the first frame by ~0.3 s.  An audio error is
    # still reported before anything is rendered.
    analysis: dict = {}

    def analyse_audio():
        try:
            analysis["mouth"] = audio_mod.analyse(audio_path, fps, total)
        except BaseException as e:  # noqa: BLE001
            analysis["error"] = e

    at = threading.Thread(target=analyse_audio, name="classic-audio", daemon=True)
    at.start()
    limit = max(1, int(round(NO_FACE_SECONDS * fps)))

    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=4)
    q_out: queue.Queue = queue.Queue(maxsize=4)
    errors: list[BaseException] = []

    def put(q, item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop()

    def get(q):
        while True:
            if stop.is_set() and q.empty():
                raise _Stop()
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def reader():
        it = iter(source)
        try:
            for k in range(total):
                try:
                    src_idx, frame = next(it)
                except StopIteration:
                    raise TransientError(f"the template yielded only {k} of {total} frames")
                put(q_in, (k, src_idx, frame))
            put(q_in, _END)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
        finally:
            try:
                it.close()
            except Exception:  # noqa: BLE001
                pass

    aperture = np.full(total, np.nan, np.float32)
    try:
        encoder = Encoder(output, audio_path, vinfo.width, vinfo.height, vinfo.fps, duration, preset=preset,
                          crf=crf)
    except BaseException:
        at.join()
        raise
    rt = threading.Thread(target=reader, name="classic-reader", daemon=True)
    rt.start()
    at.join()
    if "error" in analysis:
        stop.set()
        rt.join(timeout=10)
        encoder.abort()
        e = analysis["error"]
        if isinstance(e, audio_mod.AudioError):
            raise InputError(str(e))
        raise e
    mouth = analysis["mouth"]
    sheet = ContactSheet(mouth.envelope, mouth.open, fps) if want_sheet else None

    def writer():
        try:
            last = -1.0
            while True:
                item = get(q_out)
                if item is _END:
                    break
                k, frame, lm = item
                if do_score and lm is not None and k % stride == 0:
                    a = models.meter.measure(frame, lm)
                    if a is not None:
                        aperture[k] = a
                if sheet is not None and sheet.wants(k):
                    sheet.add(k, frame, lm)
                encoder.write(frame)
                now = time.monotonic()
                if k + 1 == total or now - last >= 0.04:
                    chan.progress(rid, k + 1, total)
                    last = now
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    wt = threading.Thread(target=writer, name="classic-writer", daemon=True)
    wt.start()
    tracked = 0
    valid_seen = 0
    miss_run_start = None
    miss_run = 0
    ok = False
    try:
        try:
            while True:
                item = get(q_in)
                if item is _END:
                    break
                k, src_idx, frame = item
                if cache.has(src_idx):
                    lm = cache.get(src_idx)
                elif src_idx == len(cache):
                    lm = models.tracker.track(frame)
                    cache.append(src_idx, lm)
                    tracked += 1
                else:  # not reachable with the ping-pong order; track without caching
                    lm = models.tracker.track(frame)
                if lm is None:
                    if miss_run == 0:
                        miss_run_start = src_idx
                    miss_run += 1
                    if miss_run >= limit:
                        raise InputError(f"no face found at {fmt_time(miss_run_start / fps)}")
                else:
                    valid_seen += 1
                    miss_run = 0
                    frame = renderer.render(frame, lm, float(mouth.open[k]), float(mouth.width[k]), out=frame)
                if source.n is not None and k + 1 >= source.n and valid_seen == 0:
                    # a short template without any face
                    raise InputError(f"no face found at {fmt_time(0.0)} (the template has no face)")
                put(q_out, (k, frame, lm))
            put(q_out, _END)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
        wt.join()
        stop.set()
        rt.join(timeout=10)
        if errors:
            raise errors[0]
        encoder.close()
        ok = True
    finally:
        stop.set()
        if not ok:
            encoder.abort()
        cache.keep(cache_path, source.n, "classic")

    elapsed = time.monotonic() - t_start
    score = lipsync_score(aperture, mouth.envelope) if do_score else None
    measured = int(np.isfinite(aperture).sum())
    info_log(f"rendered {total} frames in {elapsed:.2f}s ({total / max(elapsed, 1e-6):.1f} fps); "
             f"tracked {tracked} new template frames (cache had {cache_start}); "
             f"lip-sync score {score if score is None else round(score, 3)} over {measured} frames")
    if sheet is not None:
        stem, _ = os.path.splitext(output)
        path = stem + ".contact.png"
        try:
            sheet.write(path, aperture, title=f"{os.path.basename(video)}  score {score if score is None else round(score, 3)}")
            info_log(f"contact sheet written: {path}")
        except OSError as e:
            info_log(f"cannot write the contact sheet: {e}", "warning")
    return {"frames": total, "score": score, "elapsed": elapsed, "aperture": aperture, "mouth": mouth}
