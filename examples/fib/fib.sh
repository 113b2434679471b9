#!/bin/sh
# fib: reads n from the file `n`. For n < 2 it writes n to `out`; otherwise it writes a tail to
# `out`: two thunks for fib(n-1) and fib(n-2) and one that adds their results. thunkmesh forces
# the tail in turn; identical sub-thunks (fib(3) is asked for many times) have one id and run once.
set -eu
read -r n < n
if [ "$n" -lt 2 ]; then
    echo "$n" > out
    exit 0
fi
a=$((n - 1))
b=$((n - 2))
echo "$a" > n1
echo "$b" > n2
cat > out <<TAIL
# thunkmesh-tail v1
result = "sum#out"

[values]
fib = "fib.sh"
add = "add.sh"
n1 = "n1"
n2 = "n2"

[[thunk]]
name = "fib-$a"
program = "fib"
env = { PATH = "/usr/bin:/bin" }
inputs = { "n" = "n1", "fib.sh" = "fib", "add.sh" = "add" }
outputs = ["out"]

[[thunk]]
name = "fib-$b"
program = "fib"
env = { PATH = "/usr/bin:/bin" }
inputs = { "n" = "n2", "fib.sh" = "fib", "add.sh" = "add" }
outputs = ["out"]

[[thunk]]
name = "sum"
program = "add"
inputs = { "a" = "fib-$a#out", "b" = "fib-$b#out" }
outputs = ["out"]
TAIL
