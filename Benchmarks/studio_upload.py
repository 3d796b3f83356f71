#!/usr/bin/env python3
"""The studio's upload path beside the disk: a 2 GiB upload to `talkie serve` (streamed to
disk and hashed on the way) against `cat FILE > COPY` on the same disk, and the server's
peak memory while it receives it.

  python3 Benchmarks/studio_upload.py [--size-mib 2048] [--work /tmp/talkie-upload-bench]

Needs curl and a built .build/debug/talkie (or TALKIE_BINARY). Standard library only."""
import argparse
import json
import os
import shutil
import socket
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--work", default="/tmp/talkie-upload-bench")
    args = parser.parse_args()
    binary = os.environ.get("TALKIE_BINARY", os.path.join(ROOT, ".build/debug/talkie"))
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    source = os.path.join(args.work, "big.mp4")
    subprocess.run(f"head -c {args.size_mib}M /dev/urandom > {source}", shell=True, check=True)
    subprocess.run(["cat", source], stdout=subprocess.DEVNULL, check=True)  # warm the page cache for both

    start = time.perf_counter()
    subprocess.run(f"cat {source} > {args.work}/copy.bin && sync {args.work}/copy.bin", shell=True, check=True)
    cat_seconds = time.perf_counter() - start
    os.remove(os.path.join(args.work, "copy.bin"))

    port = free_port()
    server = subprocess.Popen([binary, "serve", "--workspace", os.path.join(args.work, "ws"), "--port", str(port),
                               "--max-upload-mb", str(args.size_mib * 2)], stdout=subprocess.DEVNULL, stderr=open(os.path.join(args.work, "server.log"), "w"))
    try:
        for _ in range(200):
            if subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/api/state"]).returncode == 0:
                break
            time.sleep(0.05)
        idle = rss_kib(server.pid)
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        answer = subprocess.run(["curl", "-s", "-X", "POST", "-T", source, "-H", "Content-Type: application/octet-stream",
                                 f"http://127.0.0.1:{port}/api/inputs/videos?name=big.mp4"], capture_output=True, text=True, check=True)
        upload_seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        assert json.loads(answer.stdout)["size"] == args.size_mib << 20, answer.stdout
    finally:
        server.terminate()
        server.wait()
    mib = args.size_mib
    print(json.dumps({"size_mib": mib, "cat_mib_s": round(mib / cat_seconds, 1), "upload_mib_s": round(mib / upload_seconds, 1),
                      "ratio_upload_to_cat": round(cat_seconds / upload_seconds, 2),
                      "server_rss_idle_mib": round(idle / 1024, 1), "server_rss_peak_mib": round(peak[0] / 1024, 1)}))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
