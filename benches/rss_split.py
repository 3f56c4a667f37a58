"""Peak RSS split into anonymous and file-backed pages (what /usr/bin/time's single number hides).

    python3 benches/rss_split.py [--interval 0.2] -- COMMAND ARGS...

Samples /proc/PID/status (RssAnon, RssFile, RssShmem) of COMMAND every interval and prints the
peaks as one JSON line on stderr at the end; exits with COMMAND's code. File-backed pages are mostly
mmap'ed inputs (safetensors) and written outputs the process has touched: the kernel can drop them
under pressure, but they count in "Maximum resident set size". Plain Python 3.
"""

import json
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    interval = 0.2
    if args and args[0] == "--interval":
        interval = float(args[1])
        args = args[2:]
    if args and args[0] == "--":
        args = args[1:]
    p = subprocess.Popen(args)
    peak = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0, "VmRSS": 0}
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    k = line.split(":")[0]
                    if k in peak:
                        peak[k] = max(peak[k], int(line.split()[1]))
        except OSError:
            pass
        time.sleep(interval)
    print(json.dumps({k + "_peak_mib": round(v / 1024) for k, v in peak.items()}), file=sys.stderr)
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
