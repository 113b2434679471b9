#!/bin/sh
# The same work done directly in a shell, for checking: prints what frequencies.txt must hold.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
cp "$here/words.txt" .
export LC_ALL=C
sh "$here/gen.sh"
tr -cs 'A-Za-z' '\n' < corpus.txt | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c | awk '{ print $1, $2 }' | sort -k1,1nr -k2,2
