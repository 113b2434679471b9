#!/bin/sh
# The same build done directly in a shell, for checking: leaves `collatz` and `report.txt`
# in the directory given as the first argument.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
cd "$out"
cp "$here"/src/*.c "$here"/src/*.h .
cc -O2 -c main.c -o main.o
cc -O2 -c stats.c -o stats.o
cc -O2 -c format.c -o format.o
cc main.o stats.o format.o -o collatz
./collatz > report.txt
