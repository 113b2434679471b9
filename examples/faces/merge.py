"""Merges the detections of each chunk (files named on the command line, in order) into one
timeline (`timeline.txt`: `FRAME X Y W H` per face) and writes the ffmpeg filter that keeps the
stretches where a face appears (`select.txt`): frames with a face, gaps of up to GAP frames
bridged, stretches shorter than SHORTEST frames dropped."""
import sys

GAP = 5
SHORTEST = 5

lines = []
for path in sys.argv[1:]:
    with open(path) as f:
        lines.extend(line for line in f.read().splitlines() if line.strip())
with open("timeline.txt", "w") as f:
    f.write("".join(line + "\n" for line in lines))

stretches = []
for frame in sorted({int(line.split()[0]) for line in lines}):
    if stretches and frame - stretches[-1][1] <= GAP + 1:
        stretches[-1][1] = frame
    else:
        stretches.append([frame, frame])
kept = [(a, b) for a, b in stretches if b - a + 1 >= SHORTEST]
if not kept:
    sys.exit("no face appears long enough for a montage")
keep = "+".join(f"between(n\\,{a}\\,{b})" for a, b in kept)
with open("select.txt", "w") as f:
    f.write(f"select='{keep}',setpts=N/FRAME_RATE/TB\n")
