#!/bin/sh
# The tail that decides the chunks: reads the flags of the video's packets in decode order
# (probe.txt, from ffprobe: `K` for a keyframe; the video has no B-frames, so packets are its
# frames in order) and the frames wanted per chunk (chunk.txt), cuts it at keyframes into chunks
# of at least that many frames, and answers with one thunk that splits the video there without
# re-encoding, one that finds faces in each chunk, one that merges their detections into a
# timeline and the stretches with faces, and one that encodes those stretches as a montage. It writes the same thunks twice, once with the
# timeline as the result and once with the montage: the job asks for both. Only shell builtins.
set -eu
read -r chunk < chunk.txt
frames=0 since=0 cuts="" firsts="0"
while read -r flags; do
    case $flags in
    K*) if [ "$frames" -gt 0 ] && [ "$since" -ge "$chunk" ]; then
            cuts="$cuts${cuts:+,}$frames" firsts="$firsts $frames" since=0
        fi ;;
    esac
    frames=$((frames + 1)) since=$((since + 1))
done < probe.txt
[ "$frames" -gt 0 ] || { echo "plan.sh: the video has no packets" >&2; exit 1; }
exact='"-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"'

thunks() {
    printf '[values]\nvideo = "video.mp4"\ndetect = "detect.py"\nmerge = "merge.py"\ncascade = "cascade.xml"\n\n'
    outputs="" detections="" files="" i=0
    for first in $firsts; do
        c=$(printf 'c%03d' $i)
        outputs="$outputs${outputs:+, }\"$c.mp4\""
        printf '[[thunk]]\nname = "detect-%s"\nprogram = { host = "/usr/bin/python3" }\nship = ["/"]\n' "$c"
        printf 'args = ["detect.py", "in.mp4", "cascade.xml", "%s"]\n' "$first"
        printf 'inputs = { "detect.py" = "detect", "cascade.xml" = "cascade", "in.mp4" = "split#%s.mp4" }\nstdout = true\n\n' "$c"
        detections="$detections, \"$c.txt\" = \"detect-$c#stdout\"" files="$files, \"$c.txt\""
        i=$((i + 1))
    done
    split_at=""
    [ -z "$cuts" ] || split_at="\"-segment_frames\", \"$cuts\", "
    printf '[[thunk]]\nname = "split"\nprogram = { host = "/usr/bin/ffmpeg" }\nship = ["/"]\n'
    printf 'args = ["-v", "error", "-i", "video.mp4", "-c", "copy", "-f", "segment", %s"-reset_timestamps", "1", %s, "c%%03d.mp4"]\n' "$split_at" "$exact"
    printf 'inputs = { "video.mp4" = "video" }\noutputs = [%s]\n\n' "$outputs"
    printf '[[thunk]]\nname = "merge"\nprogram = { host = "/usr/bin/python3" }\nship = ["/"]\n'
    printf 'args = ["merge.py"%s]\n' "$files"
    printf 'inputs = { "merge.py" = "merge"%s }\noutputs = ["timeline.txt", "select.txt"]\n\n' "$detections"
    printf '[[thunk]]\nname = "montage"\nprogram = { host = "/usr/bin/ffmpeg" }\nship = ["/"]\n'
    printf 'args = ["-v", "error", "-i", "video.mp4", "-filter_script:v", "select.txt", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1", %s, "montage.mp4"]\n' "$exact"
    printf 'inputs = { "video.mp4" = "video", "select.txt" = "merge#select.txt" }\noutputs = ["montage.mp4"]\n'
}
{ printf '# thunkmesh-tail v1\nresult = "merge#timeline.txt"\n\n'; thunks; } > timeline.toml
{ printf '# thunkmesh-tail v1\nresult = "montage#montage.mp4"\n\n'; thunks; } > montage.toml
