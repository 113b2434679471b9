"""The Python package against the real binary ($THUNKMESH): a job built in Python runs, a bad
one raises ThunkmeshError with the binary's message and exit status 2, and a failing thunk
raises with status 1 and the summary JSON."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

from thunkmesh import Job, ThunkmeshError

HERE = os.path.dirname(os.path.abspath(__file__))


class RunsJobs(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        os.chdir(self.dir.name)

    def test_a_job_built_in_python_runs_and_returns_its_summary(self):
        with open("words.txt", "w") as f:
            f.write("hello mesh\n")
        job = Job()
        words = job.value("words.txt")
        upper = job.thunk("upper", host="/bin/sh", args=["-c", "tr a-z A-Z < in > out"],
                          env={"PATH": "/usr/bin:/bin"}, inputs={"in": words}, outputs=["out"])
        job.target("upper.txt", upper["out"])
        summary = job.run(out="out", args=["-j", "2", "--memo", "off"])
        self.assertEqual(summary["status"], "succeeded")
        self.assertEqual(summary["schema_version"], 1)
        self.assertEqual(summary["thunks_executed"], 1)
        with open("out/upper.txt") as f:
            self.assertEqual(f.read(), "HELLO MESH\n")

    def test_a_bad_job_raises_with_the_binarys_message_and_status_2(self):
        job = Job()
        a = job.thunk("a", host="/bin/sh", inputs={"x": "b#o"}, outputs=["o"])
        job.thunk("b", host="/bin/sh", inputs={"x": a["o"]}, outputs=["o"])
        job.target("o", a["o"])
        with self.assertRaises(ThunkmeshError) as raised:
            job.run()
        self.assertEqual(raised.exception.exit_status, 2)
        self.assertIn("thunks form a cycle", str(raised.exception))

    def test_a_failing_thunk_raises_with_status_1_and_the_summary(self):
        job = Job()
        bad = job.thunk("bad", host="/bin/sh", args=["-c", "exit 3"], outputs=["o"])
        job.target("o", bad["o"])
        with self.assertRaises(ThunkmeshError) as raised:
            job.run(args=["--memo", "off"])
        self.assertEqual(raised.exception.exit_status, 1)
        self.assertEqual(raised.exception.summary["status"], "failed")
        self.assertIn("bad", str(raised.exception))

    def test_the_example_counts_words(self):
        with open("text.txt", "w") as f:
            f.write("".join(f"line {i} has five words\n" for i in range(100)))
        example = os.path.join(HERE, "..", "examples", "wordcount.py")
        done = subprocess.run([sys.executable, example, "text.txt", "4"], capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith("500 words; 6 thunk(s) ran"), done.stdout)

    @unittest.skipUnless(os.geteuid() == 0, "an own root needs namespaces (root, as in CI)")
    def test_a_shipped_program_runs_in_its_own_root(self):
        job = Job()
        probe = "if command -v tr >/dev/null; then echo host; else echo shipped; fi"
        t = job.thunk("t", host="/bin/sh", args=["-c", probe], stdout=True, ship=["/bin/sh"])
        job.target("o.txt", t["stdout"])
        self.assertEqual(job.to_dict()["thunk"][0]["ship"], ["/bin/sh"])
        job.run(out="out", args=["--memo", "off"])
        with open("out/o.txt") as f:
            self.assertEqual(f.read(), "shipped\n", "the root holds the shell and nothing else")

    def test_the_json_job_is_a_file_the_binary_takes(self):
        job = Job()
        t = job.thunk("t", host="/bin/sh", args=["-c", "echo hi > o"], outputs=["o"])
        job.target("o.txt", t["o"])
        job.write("job.json")
        with open("job.json") as f:
            self.assertEqual(json.load(f)["thunk"][0]["name"], "t")
        done = subprocess.run([os.environ["THUNKMESH"], "run", "job.json", "-q"], capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)


if __name__ == "__main__":
    unittest.main()
