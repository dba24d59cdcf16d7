"""py-spy around a scenario: record the server's stacks, then summarize where the time went."""

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"


def record_start(pid: int, output: Path, rate: int = 200) -> subprocess.Popen:
    """Start sampling `pid` into a collapsed-stack file; stop with record_stop.

    Only the thread holding the GIL is sampled (`--gil`): the CPU the interpreter spends.
    Without it, threads blocked in a queue's `get` (the database and log threads, idle
    executors) count as busy, since py-spy cannot always tell a C-level wait from work.
    """
    return subprocess.Popen(
        [
            *(str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--gil"),
            *("--format", "raw", "--output", str(output)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def record_stop(process: subprocess.Popen) -> None:
    """SIGINT makes py-spy write its file and exit."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: one name per function, not per line."""
    name, _, where = frame.partition(" (")
    module = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({module})" if module else name


def summarize(collapsed: Path, top: int = 20) -> str:
    """Self and inclusive sample shares per function, from py-spy's raw (collapsed) output."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame_name(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), top=int(sys.argv[2]) if len(sys.argv) > 2 else 20))
