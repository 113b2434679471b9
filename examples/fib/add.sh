#!/bin/sh
# Adds the numbers in files `a` and `b` into `out`.
set -eu
read -r a < a
read -r b < b
echo $((a + b)) > out
