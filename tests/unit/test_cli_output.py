"""The command line's output (no root)."""

import subprocess
import sys


def test_cli_output_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`netfence status | head`: the reader leaves early; exit 1, no traceback."""
    script = ("import os, sys\n"
              "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
              "from netfence.cli import main\n"
              "sys.exit(main(['--config-dir', sys.argv[1], 'pam-line']))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
