#!/bin/sh
# Counts the words of `part` into `counts.txt` as "word count" lines, sorted by word.
set -eu
tr -cs 'A-Za-z' '\n' < part | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c | awk '{ print $2, $1 }' > counts.txt
