#!/bin/sh
# A stand-in for a lip-sync model's inference script, for engines/tests/test_command.py.
#
#   fake_model.sh --face VIDEO --audio AUDIO --outfile OUT [options]
#
# By default it copies the template's video (no audio) to OUT, like a model whose output
# lacks the narration and has the template's length.  Options:
#   --mode ok|other-audio|avi|fail|noface|nooutput|empty|signal|flood|sleep
#   --progress frames|tqdm|none   print progress (frames: "Processing frame i/N" lines on
#                                 stderr; tqdm: "\r 40%|####      | 4/10" on stdout, no newlines)
#   --record FILE                 write the arguments it received to FILE, one per line
#   --flood-mb N                  with --mode flood: N MB of output on stderr first (default 50)
#   --sleep S                     with --mode sleep: sleep S seconds (its pid goes to FILE.pid with --record)
# Exit statuses: fail -> 3, noface -> 1, bad arguments -> 2 (as argparse).
set -u
mode=ok progress=none face= audio= out= record= flood_mb=50 sleep_s=30
while [ $# -gt 0 ]; do
    case "$1" in
        --face) face=$2; shift 2 ;;
        --audio) audio=$2; shift 2 ;;
        --outfile) out=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --progress) progress=$2; shift 2 ;;
        --record) record=$2; shift 2 ;;
        --flood-mb) flood_mb=$2; shift 2 ;;
        --sleep) sleep_s=$2; shift 2 ;;
        *) echo "fake_model.sh: error: unrecognized argument: $1" >&2; exit 2 ;;
    esac
done
if [ -n "$record" ]; then
    : > "$record"
    for a in --face "$face" --audio "$audio" --outfile "$out"; do printf '%s\n' "$a" >> "$record"; done
fi
[ -f "$face" ] || { echo "fake_model.sh: no such template: $face" >&2; exit 2; }
[ -f "$audio" ] || { echo "fake_model.sh: no such audio: $audio" >&2; exit 2; }
echo "fake model: loading checkpoint"

case "$progress" in
    frames)
        i=0
        while [ $i -lt 30 ]; do
            i=$((i + 1))
            echo "Processing frame $i/30" >&2
            sleep 0.01
        done ;;
    tqdm)
        i=0
        while [ $i -le 10 ]; do
            bar=$(printf '%*s' "$i" '' | tr ' ' '#')
            printf '\r%3d%%|%-10s| %d/10 [00:01<00:00]' $((i * 10)) "$bar" $i
            i=$((i + 1))
            sleep 0.03
        done
        printf '\n' ;;
esac

case "$mode" in
    ok)
        exec ffmpeg -nostdin -v error -y -i "$face" -map 0:v:0 -c:v copy -an "$out" ;;
    other-audio)
        exec ffmpeg -nostdin -v error -y -i "$face" -f lavfi -i "sine=frequency=440:duration=3:sample_rate=48000" \
            -map 0:v:0 -map 1:a:0 -c:v copy -c:a aac "$out" ;;
    avi)
        exec ffmpeg -nostdin -v error -y -i "$face" -map 0:v:0 -c:v mpeg4 -q:v 5 -an "$out" ;;
    fail)
        echo "Traceback (most recent call last):" >&2
        echo "  File \"inference.py\", line 280, in <module>" >&2
        echo "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2
        exit 3 ;;
    noface)
        echo "Traceback (most recent call last):" >&2
        echo "ValueError: Face not detected! Ensure the video contains a face in all the frames." >&2
        exit 1 ;;
    nooutput)
        echo "fake model: done (wrote nothing)"
        exit 0 ;;
    empty)
        : > "$out"
        exit 0 ;;
    signal)
        echo "fake model: about to crash" >&2
        kill -KILL $$
        sleep 5
        exit 0 ;;
    flood)
        # flood_mb MB of output on stderr: lines of 999 characters, then 1 MB with no newline at all
        head -c $((flood_mb * 1000000)) /dev/zero | tr '\0' 'x' | fold -w 999 >&2
        head -c 1000000 /dev/zero | tr '\0' 'y' >&2
        echo >&2
        exec ffmpeg -nostdin -v error -y -i "$face" -map 0:v:0 -c:v copy -an "$out" ;;
    sleep)
        [ -n "$record" ] && echo $$ > "$record.pid"
        sleep "$sleep_s"
        exit 0 ;;
    *)
        echo "fake_model.sh: error: unknown mode $mode" >&2
        exit 2 ;;
esac
