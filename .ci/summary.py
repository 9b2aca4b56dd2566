"""Adds up the pytest summary lines of several logs into one closing line.

    python3 .ci/summary.py LOG [LOG ...]

Prints `ci: N passed, N failed, N skipped` (errors count as failed) and exits
non-zero if a log has no pytest summary line, or if no test passed.
"""

import re
import sys


def summary_counts(text):
    """Counts of pytest's last summary line in `text` (None if there is none).

    >>> summary_counts("== 3 failed, 640 passed, 2 skipped in 251.3s ==")
    {'failed': 3, 'passed': 640, 'skipped': 2}
    """
    lines = [
        line for line in text.splitlines()
        if re.search(r"\bin [0-9.]+s\b", line)
        and re.search(r"\d+ (passed|failed|errors?|skipped)", line)
    ]
    if not lines:
        return None
    counts = {}
    for number, word in re.findall(r"(\d+) (\w+)", lines[-1]):
        word = {"error": "errors"}.get(word, word)
        counts[word] = counts.get(word, 0) + int(number)
    return counts


def main(paths):
    total = {"passed": 0, "failed": 0, "skipped": 0}
    status = 0
    for path in paths:
        with open(path, errors="replace") as f:
            counts = summary_counts(f.read())
        if counts is None:
            print(f"ci: no pytest summary in {path}", file=sys.stderr)
            status = 1
            continue
        total["passed"] += counts.get("passed", 0)
        total["failed"] += counts.get("failed", 0) + counts.get("errors", 0)
        total["skipped"] += counts.get("skipped", 0)
    print(f"ci: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped")
    return status or int(total["passed"] == 0 or total["failed"] > 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
