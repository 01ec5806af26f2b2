#!/usr/bin/env python3
"""overhead-breakdown.py START SECONDS LOG BARE_START BARE_SECONDS BARE_MID:
where a `migrate run` that started at START (seconds since the epoch) and
took SECONDS spent its time, from the run's log (var/log/migrate/migrate.log
of the root), beside the bare run that started at BARE_START, took
BARE_SECONDS and finished `apt-get update` at BARE_MID. Prints one line, in
milliseconds:

  host        the host before its first log line (options, root, podman,
              image)
  container   from it to the agent's first line (create, start)
  steps       the agent's steps other than the package upgrade, and the
              agent's own work between them
  update      the upgrade step up to `dist-upgrade` (`apt-get update`), and
              the bare run's
  dist-upgrade  the rest of the upgrade step, and the bare run's
  teardown    from the agent's last line to the process's end (exit code,
              container removal, report)
"""
import datetime
import sys


def stamp(line):
    t = datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def main():
    start, seconds, log = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    bare_start, bare, bare_mid = (float(a) for a in sys.argv[4:7])
    lines = [l for l in open(log, errors="replace").read().splitlines() if l[:4].isdigit()]
    agent = [l for l in lines if " [agent] " in l]
    upgrade = [l for l in lines if " [upgrade-packages] " in l]
    dist = [l for l in upgrade if "$ chroot" in l and "dist-upgrade" in l]
    if not agent or not upgrade or not dist:
        print("the log has no agent, upgrade or dist-upgrade lines")
        return
    first = stamp(lines[0])
    agent_first, agent_last = stamp(agent[0]), stamp(agent[-1])
    up_start, up_end, dist_start = stamp(upgrade[0]), stamp(upgrade[-1]), stamp(dist[0])
    ms = lambda s: round(s * 1000)
    bare_update = bare_mid - bare_start
    print(
        f"host {ms(first - start)}  container {ms(agent_first - first)}  "
        f"steps {ms(agent_last - agent_first - (up_end - up_start))}  "
        f"update {ms(dist_start - up_start)} (bare {ms(bare_update)})  "
        f"dist-upgrade {ms(up_end - dist_start)} (bare {ms(bare - bare_update)})  "
        f"teardown {ms(start + seconds - agent_last)}"
    )


main()
