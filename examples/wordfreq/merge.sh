#!/bin/sh
# Sums the per-part counts (files c0, c1, ...) into frequencies.txt: "count word",
# most frequent first, ties by word.
set -eu
cat c* | awk '{ n[$1] += $2 } END { for (w in n) print n[w], w }' | sort -k1,1nr -k2,2 > frequencies.txt
