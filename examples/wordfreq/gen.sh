#!/bin/sh
# Writes a deterministic text of about 6 MB to corpus.txt: 1,000,000 words drawn from
# words.txt by a fixed linear congruential generator, 12 to a line.
set -eu
awk -v n=1000000 '
  NR == FNR { w[NR - 1] = $1; k = NR; next }
  END {
    s = 42
    for (i = 1; i <= n; i++) {
      s = (s * 1103515245 + 12345) % 2147483648
      printf "%s%s", w[int(s / 65536) % k], (i % 12 ? " " : "\n")
    }
  }' words.txt words.txt > corpus.txt
