#!/usr/bin/env python3
"""Talkie's built-in CPU lip-sync engine ("classic"), a protocol-1 worker.

    .venv/bin/python engines/classic/worker.py

Reads render requests as JSON lines on stdin and answers on stdout (see
docs/engine-protocol.md); human-readable logs go to stderr.  Models are loaded
once, at start.
"""
from __future__ import annotations

import os
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from protocol import claim_stdout, serve  # noqa: E402

NAME = "classic"
VERSION = "1.0.0"


def main() -> int:
    chan = claim_stdout()  # before any library can print on fd 1
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import numpy  # noqa: F401
        import cv2  # noqa: F401
        from pipeline import Models
        models = Models()
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        chan.fatal(f"the classic engine cannot start: {type(e).__name__}: {e} "
                   f"(install its environment: pip install -r engines/requirements.txt -c engines/constraints.txt "
                   f"&& pip install --no-deps -r engines/requirements-nodeps.txt)")
        return 1
    from pipeline import render_item
    from video_io import InputError, TransientError

    chan.hello(NAME, VERSION, {"audio_sample_rate": 16000, "audio_channels": 1, "progress": True,
                               "device": "cpu", "score": True, "face_track_cache": True,
                               "params": ["contact_sheet", "strength", "score", "score_stride",
                                          "x264_preset", "crf"]})

    def render(msg):
        res = render_item(msg, models, chan)
        return (res["frames"], res["score"])

    return serve(chan, NAME, render, InputError, TransientError)


if __name__ == "__main__":
    sys.exit(main())
