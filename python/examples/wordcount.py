"""Counts the words of a text in parallel parts with thunkmesh, from Python.

    python wordcount.py TEXT [PARTS]

Splits TEXT into PARTS (default 4) by lines, counts each part's words in its own thunk, sums
the counts in one more, and prints the total with what the run did.
"""

import sys

from thunkmesh import Job

SH = "/bin/sh"
PATH = {"PATH": "/usr/bin:/bin"}


def main() -> None:
    text, parts = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4
    job = Job()
    corpus = job.value(text)
    split = job.thunk(
        "split",
        host=SH,
        args=["-c", f"split -n l/{parts} -d -a 2 text part-"],
        env=PATH,
        inputs={"text": corpus},
        outputs=[f"part-{i:02d}" for i in range(parts)],
    )
    counts = {}
    for i in range(parts):
        count = job.thunk(
            f"count-{i}", host=SH, args=["-c", "wc -w < in > n"], env=PATH, inputs={"in": split[f"part-{i:02d}"]},
            outputs=["n"],
        )
        counts[f"n{i}"] = count["n"]
    total = job.thunk(
        "sum", host=SH, args=["-c", "cat n* | awk '{s += $1} END {print s}' > total"], env=PATH, inputs=counts,
        outputs=["total"],
    )
    job.target("total.txt", total["total"])
    summary = job.run(out="out")
    with open("out/total.txt", encoding="utf-8") as f:
        print(f"{f.read().strip()} words; {summary['thunks_executed']} thunk(s) ran, {summary['thunks_cached']} cached")


if __name__ == "__main__":
    main()
