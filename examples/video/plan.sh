#!/bin/sh
# The tail that decides the chunks, ExCamera's shape: reads the flags of the source's video
# packets in decode order (probe.txt, from ffprobe: `K` for a keyframe) and the frames wanted per
# chunk (chunk.txt), cuts the source at keyframes into chunks of at least that many frames (the
# segment muxer counts packets, so the cuts are packet numbers), and answers with one thunk
# that splits the source there without re-encoding, one that encodes each chunk, and one that
# stitches the encoded chunks (and the source's audio) without re-encoding. Only shell builtins:
# on a node without namespaces it runs through its shipped loader and could start nothing else.
set -eu
read -r chunk < chunk.txt
frames=0 since=0 cuts="" chunks=1
while read -r flags; do
    case $flags in
    K*) if [ "$frames" -gt 0 ] && [ "$since" -ge "$chunk" ]; then
            cuts="$cuts${cuts:+,}$frames" chunks=$((chunks + 1)) since=0
        fi ;;
    esac
    frames=$((frames + 1)) since=$((since + 1))
done < probe.txt
[ "$frames" -gt 0 ] || { echo "plan.sh: the source has no video packets" >&2; exit 1; }

# Flags every encoder call shares (expected.sh uses the same): one thread per chunk, as ExCamera
# runs one chunk per worker; bit-exact muxing so equal work gives equal bytes.
encode='"-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1"'
exact='"-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"'

name() { printf 'c%03d' "$1"; }
{
    printf '# thunkmesh-tail v1\nresult = "stitch#encoded.mp4"\n\n[values]\nsource = "source.mp4"\nlist = "list.txt"\n\n'
    outputs="" i=0
    while [ $i -lt $chunks ]; do outputs="$outputs${outputs:+, }\"$(name $i).mp4\""; i=$((i + 1)); done
    split_at=""
    [ -z "$cuts" ] || split_at="\"-segment_frames\", \"$cuts\", "
    printf '[[thunk]]\nname = "split"\nprogram = { host = "/usr/bin/ffmpeg" }\nship = ["/"]\n'
    printf 'args = ["-v", "error", "-i", "source.mp4", "-map", "0:v", "-c", "copy", "-f", "segment", %s"-reset_timestamps", "1", %s, "c%%03d.mp4"]\n' "$split_at" "$exact"
    printf 'inputs = { "source.mp4" = "source" }\noutputs = [%s]\n\n' "$outputs"
    stitched="" i=0
    : > list.txt
    while [ $i -lt $chunks ]; do
        c=$(name $i)
        printf '[[thunk]]\nname = "encode-%s"\nprogram = { host = "/usr/bin/ffmpeg" }\nship = ["/"]\n' "$c"
        printf 'args = ["-v", "error", "-i", "in.mp4", %s, %s, "out.mp4"]\n' "$encode" "$exact"
        printf 'inputs = { "in.mp4" = "split#%s.mp4" }\noutputs = ["out.mp4"]\n\n' "$c"
        printf "file '%s.mp4'\n" "$c" >> list.txt
        stitched="$stitched, \"$c.mp4\" = \"encode-$c#out.mp4\""
        i=$((i + 1))
    done
    printf '[[thunk]]\nname = "stitch"\nprogram = { host = "/usr/bin/ffmpeg" }\nship = ["/"]\n'
    printf 'args = ["-v", "error", "-f", "concat", "-safe", "0", "-i", "list.txt", "-i", "source.mp4", "-map", "0:v", "-map", "1:a?", "-c", "copy", %s, "encoded.mp4"]\n' "$exact"
    printf 'inputs = { "list.txt" = "list", "source.mp4" = "source"%s }\noutputs = ["encoded.mp4"]\n' "$stitched"
} > tail.toml
