#!/bin/sh
# The same encode done directly in a shell, for checking: probes the source beside this script,
# cuts it where plan.sh cuts it, encodes each chunk and stitches them with the same ffmpeg
# arguments the thunks use, and leaves `encoded.mp4` in the folder given as the first argument.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
cd "$out"
cp "$here/source.mp4" "$here/chunk.txt" "$here/plan.sh" .
ffprobe -v error -select_streams v:0 -show_entries packet=flags -of csv=p=0 source.mp4 > probe.txt
sh plan.sh
# The frames plan.sh cuts at, from its tail.
cuts=$(sed -n 's/.*"-segment_frames", "\([^"]*\)".*/\1/p' tail.toml)
exact="-fflags +bitexact -flags:v +bitexact -map_metadata -1"
# shellcheck disable=SC2086
ffmpeg -v error -y -i source.mp4 -map 0:v -c copy -f segment ${cuts:+-segment_frames "$cuts"} \
    -reset_timestamps 1 $exact c%03d.mp4
mkdir -p encoded
while read -r _ name; do
    name=${name#\'} name=${name%\'}
    # -nostdin: ffmpeg reads keys from its standard input, which is list.txt in this loop; it
    # would eat the lines still to be read (now and then, as timing has it).
    # shellcheck disable=SC2086
    ffmpeg -nostdin -v error -y -i "$name" -c:v libx264 -preset veryfast -crf 23 -pix_fmt yuv420p -threads 1 \
        $exact "encoded/$name"
done < list.txt
cp list.txt source.mp4 encoded/
cd encoded
# shellcheck disable=SC2086
ffmpeg -v error -y -f concat -safe 0 -i list.txt -i source.mp4 -map 0:v -map '1:a?' -c copy $exact ../encoded.mp4
