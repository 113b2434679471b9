#!/bin/sh
# The same search done directly, for checking: the detector runs in one process over the whole
# source beside this script (no chunks), the detections are merged and the montage encoded with
# the same arguments the thunks use. Leaves `timeline.txt` and `montage.mp4` in the folder given
# as the first argument.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
cd "$out"
exact="-fflags +bitexact -flags:v +bitexact -map_metadata -1"
# shellcheck disable=SC2086
ffmpeg -v error -y -i "$here/source.avi" -map 0:v:0 -fps_mode passthrough -c:v libx264 -qp 0 -preset ultrafast \
    -g 25 -bf 0 -pix_fmt yuv420p -threads 1 $exact video.mp4
/usr/bin/python3 "$here/detect.py" "$here/source.avi" "$here/cascade.xml" 0 > whole.txt
/usr/bin/python3 "$here/merge.py" whole.txt
# shellcheck disable=SC2086
ffmpeg -v error -y -i video.mp4 -filter_script:v select.txt -c:v libx264 -preset veryfast -crf 23 \
    -pix_fmt yuv420p -threads 1 $exact montage.mp4
