#!/usr/bin/env python3
"""measure.py CMD...: runs CMD and prints 'SECONDS PEAK_RSS_KB EXIT_CODE' on stderr's
last line. PEAK_RSS_KB is the largest resident set of CMD and of the processes it
waited for (getrusage RUSAGE_CHILDREN). With MEASURE_START_FILE set, writes the
wall-clock time CMD started at (seconds since the epoch) into that file."""
import os
import resource
import subprocess
import sys
import time

start_file = os.environ.get("MEASURE_START_FILE")
if start_file:
    with open(start_file, "w") as f:
        f.write(f"{time.time():.6f}\n")
start = time.monotonic()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
elapsed = time.monotonic() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{elapsed:.3f} {rss} {proc.returncode}")
