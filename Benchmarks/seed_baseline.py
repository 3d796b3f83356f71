#!/usr/bin/env python3
"""The seed's design, written plainly from the article (../shared/seed/): MD5 of each input
in 4 KiB reads, task_status.json rewritten in full (json.dump indent=2, ensure_ascii=False,
then os.replace) after every state change, no hash cache, serial.

  seed_baseline.py hash FILE...           MD5 of each file, one line each (as md5sum prints)
  seed_baseline.py restart DIR            load the state, MD5 every template, skip successes
  seed_baseline.py state-overhead DIR N K N items in the state; time K items' two changes each
restart and state-overhead print one JSON line of results."""
import hashlib
import json
import os
import statistics
import sys
import time


def compute_file_hash(filepath):
    hash_md5 = hashlib.md5()
    with open(filepath, "rb") as f:
        for chunk in iter(lambda: f.read(4096), b""):
            hash_md5.update(chunk)
    return hash_md5.hexdigest()


def save_task_status(path, status_dict):
    temp_path = path + ".tmp"
    with open(temp_path, "w", encoding="utf-8") as f:
        json.dump(status_dict, f, ensure_ascii=False, indent=2)
    os.replace(temp_path, path)


def load_task_status(path):
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, IOError):
        return {}


def restart(folder):
    start = time.perf_counter()
    status = load_task_status(os.path.join(folder, "seed_status.json"))
    templates = os.path.join(folder, "templates")
    todo = 0
    for name in sorted(os.listdir(templates)):
        key = compute_file_hash(os.path.join(templates, name))
        if status.get(key, {}).get("status") != "success":
            todo += 1
    print(json.dumps({"restart_s": time.perf_counter() - start, "to_render": todo}))


def state_overhead(folder, count, sample):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "task_status.json")
    status = {hashlib.md5(str(n).encode()).hexdigest(): {"status": "pending", "filename": f"t{n}.mp4"} for n in range(count)}
    save_task_status(path, status)
    keys = list(status)[:sample]
    per_item = []
    for key in keys:
        start = time.perf_counter()
        status[key]["status"] = "running"
        save_task_status(path, status)
        status[key]["status"] = "success"
        status[key]["output"] = "out.mp4"
        save_task_status(path, status)
        per_item.append((time.perf_counter() - start) * 1000)
    per_item.sort()
    print(json.dumps({"items": count, "sampled": sample, "per_item_ms_mean": statistics.mean(per_item),
                      "per_item_ms_p50": per_item[len(per_item) // 2],
                      "per_item_ms_p99": per_item[min(len(per_item) - 1, int(len(per_item) * 0.99))]}))


if __name__ == "__main__":
    if sys.argv[1] == "hash":
        for name in sys.argv[2:]:
            print(f"{compute_file_hash(name)}  {name}")
    elif sys.argv[1] == "restart":
        restart(sys.argv[2])
    else:
        state_overhead(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
