#!/bin/sh
# How source.mp4 was made: six seconds of a zooming Mandelbrot set (motion that is hard to encode)
# with a 440 Hz tone, 640x360 at 25 frames per second, a keyframe every second. Replace
# source.mp4 with your own footage to encode that instead.
set -eu
cd "$(dirname "$0")"
ffmpeg -loglevel error -y -f lavfi -i "mandelbrot=size=640x360:rate=25" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 6 \
    -c:v libx264 -preset veryfast -crf 26 -g 25 -pix_fmt yuv420p -c:a aac -b:a 64k -shortest \
    -fflags +bitexact -map_metadata -1 source.mp4
