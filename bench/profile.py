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


# Where a session's CPU goes, by the project module deepest in each sampled stack: a sample
# with no project frame is the server's and the framework's (daphne or uvicorn, Channels,
# asyncio) on the project's behalf or its own.
FEATURES = {
    "inbox task (frame queue, rate limit, size check)": ("inbox.py", "ratelimit.py"),
    "handshake checks and auth (address, origin, cookie fast path, API token)": (
        "addresses.py",
        "origin.py",
        "auth_fastpath.py",
        "middleware.py",
        "permissions.py",
    ),
    "registry round trip (writer thread, insert and delete)": (
        "sessions.py",
        "registry_writer.py",
        "database.py",
        "instances.py",
        "models.py",
    ),
    "event lines, logs, metrics, admin activity": ("events.py", "logqueue.py", "metrics.py", "activity.py", "live.py"),
    "lifecycle: lease, connections, process state": (
        "lease.py",
        "heartbeat.py",
        "server_hooks.py",
        "process.py",
        "connections.py",
    ),
    "resume bookkeeping (token, release policy)": ("tokens.py", "release.py"),
    "session events (delivery)": ("delivery.py",),
    "protocol: decode, validate, reply": ("protocol.py", "session_messages.py", "message_types.py", "errors.py"),
    "workspace resolution (thread pool)": ("resolver.py", "workspaces.py"),
    "consumer glue (dispatch, send)": ("consumers.py", "compat.py"),
}
FRAMEWORK = "server and framework (daphne or uvicorn, Channels, Django, asyncio)"


def feature_of(frames: list[str]) -> str:
    """The feature of the deepest project frame of a stack (leaf last)."""
    for frame in reversed(frames):
        if "sessions_app/" not in frame:
            continue
        module = frame.rsplit("sessions_app/", 1)[1].split(":", 1)[0]
        for feature, modules in FEATURES.items():
            if module in modules:
                return feature
        return f"other ({module})"
    return FRAMEWORK


def features(collapsed: Path) -> dict[str, float]:
    """Each feature's share (0-1) of the samples in a py-spy raw file, largest first."""
    shares: Counter = Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            shares[feature_of(stack.split(";"))] += int(count_text)
    total = sum(shares.values()) or 1
    return {feature: count / total for feature, count in shares.most_common()}


def features_table(collapsed: Path, cpu_us_per_session: float | None = None) -> str:
    """A Markdown table of where a session's CPU goes, as shares and, given the total, microseconds."""
    lines = ["| where | share | µs per session |", "|---|---:|---:|"]
    for feature, share in features(collapsed).items():
        micros = f"{share * cpu_us_per_session:,.0f}" if cpu_us_per_session else ""
        lines.append(f"| {feature} | {100 * share:.1f} % | {micros} |")
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    print(summarize(path, top=int(sys.argv[2]) if len(sys.argv) > 2 else 20))
    print()
    print(features_table(path, float(sys.argv[3]) if len(sys.argv) > 3 else None))
