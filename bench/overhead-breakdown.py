#!/usr/bin/env python3
"""overhead-breakdown.py START SECONDS LOG BARE_SECONDS: where a `migrate run`
that started at START (seconds since the epoch) and took SECONDS spent the
time the bare package manager (BARE_SECONDS) did not, from the run's log
(var/log/migrate/migrate.log of the root). Prints one line, in milliseconds:

  host      the host before its first log line (options, root, podman, image)
  container from it to the agent's first line (create, start)
  steps     the agent's steps other than the package upgrade, and the agent's
            own work between them
  upgrade   the package upgrade step, against the whole bare run
  teardown  from the agent's last line to the process's end (exit code,
            container removal, report)
"""
import datetime
import sys


def stamp(line):
    t = datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def main():
    start, seconds, log, bare = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    lines = [l for l in open(log, errors="replace").read().splitlines() if l[:4].isdigit()]
    agent = [l for l in lines if " [agent] " in l]
    upgrade = [l for l in lines if " [upgrade-packages] " in l]
    if not agent or not upgrade:
        print("breakdown: the log has no agent or upgrade lines")
        return
    first, last = stamp(lines[0]), stamp(lines[-1])
    agent_first, agent_last = stamp(agent[0]), stamp(agent[-1])
    up = stamp(upgrade[-1]) - stamp(upgrade[0])
    ms = lambda s: round(s * 1000)
    print(
        f"host {ms(first - start)}  container {ms(agent_first - first)}  "
        f"steps {ms(agent_last - agent_first - up)}  "
        f"upgrade {ms(up)} (bare run {ms(bare)})  "
        f"teardown {ms(start + seconds - agent_last)}"
    )


main()
