#!/bin/sh
# The same suite run directly, for checking: configures and builds this project in the folder
# given as the first argument and runs CTest there, which writes its verdicts as JUnit XML to
# ctest.xml (and googletest's own to gtest.xml).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=$1
cmake -S "$here" -B "$build" -G Ninja >/dev/null
cmake --build "$build" >/dev/null
cd "$build"
ctest --output-junit ctest.xml >/dev/null
./stats_test --gtest_output=xml:gtest.xml >/dev/null
