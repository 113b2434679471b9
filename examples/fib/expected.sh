#!/bin/sh
# fib(n) computed directly in a shell, n read from n.txt beside this script.
set -eu
read -r n < "$(dirname "$0")/n.txt"
a=0
b=1
i=0
while [ "$i" -lt "$n" ]; do
    t=$((a + b))
    a=$b
    b=$t
    i=$((i + 1))
done
echo "$a"
