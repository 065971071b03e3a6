"""Progress bars write plain lines to a log file: no carriage returns, no cursor codes."""

import subprocess
import sys


def test_bars_in_a_log_file_are_plain_lines(tmp_path):
    script = ("from cellrcnn.utils.progress import progress\n"
              "for _ in progress(range(3), desc='epochs'):\n"
              "    for _ in progress(range(50), desc='train', leave=False):\n"
              "        pass\n")
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120)
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert any(line.startswith("epochs: 100%") and "3/3" in line for line in lines), lines
    assert any(line.startswith("train: 100%") and "50/50" in line for line in lines), lines
    assert len(lines) <= 20  # a few lines per bar, not a redraw per step
