"""Run tests/e2e and tests/chaos/test_chaos.py in four groups side by side (`make test`'s second step).

Most of an end-to-end test's time is waiting — for a VM to boot, a scale-down window, a drain — not CPU,
so the groups of tests/helpers/groups.py run as four pytest processes at once; within a group one test
at a time. Each group's output is printed whole when it ends; the last line sums them up, and the exit
status is non-zero if any group failed (or ran no test).

    python tests/run_e2e.py [PYTEST_ARGS...]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from helpers.groups import GROUPS, e2e_group  # noqa: E402

TARGETS = ["tests/e2e", "tests/chaos/test_chaos.py"]
# A group whose daemons scripts/setup/background.sh brings up while the others already run.
BACKGROUND = {"cloud": "openstack"}
SETUP_DIR = Path("/run/tierscale-setup")
SETUP_TIMEOUT = 1200.0
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


def collect(extra: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *TARGETS, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    ids = [ln for ln in done.stdout.splitlines() if "::" in ln and not ln.startswith(" ")]
    if done.returncode != 0 or not ids:
        sys.stdout.write(done.stdout + done.stderr)
        raise SystemExit(done.returncode or 1)
    return ids


def main(extra: list[str]) -> int:
    started = time.monotonic()
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for nodeid in collect(extra):
        by_group[e2e_group(nodeid)].append(nodeid)
    runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    out_dir = Path(tempfile.mkdtemp(prefix="tierscale-e2e-"))
    waiting = {g: ids for g, ids in by_group.items() if ids and g in BACKGROUND and _setup_running(g)}

    def launch(group: str, ids: list[str]) -> None:
        log = out_dir / f"{group}.log"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-ra",
            "--durations=8",
            "-p",
            "no:cacheprovider",
            *extra,
            *ids,
        ]
        with log.open("wb") as fh:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        runs[group] = (proc, log)
        print(f"e2e: group {group}: {len(ids)} tests", flush=True)

    for group, ids in by_group.items():
        if ids and group not in waiting:
            launch(group, ids)
    for group in waiting:
        print(f"e2e: group {group} waits for setup/{BACKGROUND[group]}", flush=True)
    totals: dict[str, int] = {}
    failed_groups = []
    pending = dict(runs)
    while pending or waiting:
        for group, ids in list(waiting.items()):
            rc = _setup_rc(group, started)
            if rc is None:
                continue
            del waiting[group]
            if rc == 0:
                launch(group, ids)
                pending[group] = runs[group]
                continue
            log = SETUP_DIR / f"{BACKGROUND[group]}.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            print(f"\n===== e2e group {group}: setup/{BACKGROUND[group]} failed (rc {rc}) =====\n{tail}")
            totals["failed"] = totals.get("failed", 0) + len(ids)
            failed_groups.append(group)
        for group, (proc, log) in list(pending.items()):
            if proc.poll() is None:
                continue
            del pending[group]
            text = log.read_text(errors="replace")
            took = time.monotonic() - started
            print(f"\n===== e2e group {group} (exit {proc.returncode}, {took:.0f} s) =====")
            print(text.rstrip(), flush=True)
            tail = text.strip().splitlines()[-1:] or [""]
            for n, kind in COUNT.findall(tail[0]):
                key = "failed" if kind.startswith("error") else kind
                totals[key] = totals.get(key, 0) + int(n)
            if proc.returncode != 0:
                failed_groups.append(group)
        time.sleep(1)
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = f"{totals.get('passed', 0)} passed, {totals.get('failed', 0)} failed"
    if totals.get("skipped"):
        summary += f", {totals['skipped']} skipped"
    print(f"\ne2e: {time.monotonic() - started:.0f} s; failed groups: {', '.join(failed_groups) or 'none'}")
    print(summary)
    return 1 if failed_groups else 0


def _setup_running(group: str) -> bool:
    """scripts/setup/background.sh started this group's setup and it has not ended yet."""
    part = BACKGROUND[group]
    return (SETUP_DIR / f"{part}.log").exists() and not (SETUP_DIR / f"{part}.rc").exists()


def _setup_rc(group: str, since: float) -> int | None:
    """The background setup's exit status once it ended; 124 when it outlived SETUP_TIMEOUT."""
    rc = SETUP_DIR / f"{BACKGROUND[group]}.rc"
    if rc.exists():
        text = rc.read_text().strip()
        return int(text) if text.isdigit() else 1
    return 124 if time.monotonic() - since > SETUP_TIMEOUT else None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
