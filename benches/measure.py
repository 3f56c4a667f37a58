"""Run a command several times under /usr/bin/time -v; record wall time and peak RSS as JSON.

    python3 benches/measure.py --out RESULTS.jsonl --name NAME [--runs 3] [--before CMD] [--scoring FILE]
                              [--note TEXT] -- COMMAND ARGS...

Each run: `--before` (a shell command, untimed: e.g. remove the previous output), then COMMAND under
`/usr/bin/time -v`, its stdout/stderr kept in RESULTS.logs/NAME.runK.log. A run that exits non-zero
stops the series and is recorded with its exit code and the tail of its log (nothing is retried).
Appended to RESULTS.jsonl: one object with the name, command, every run's wall seconds and peak RSS
(KiB, "Maximum resident set size": the largest single process of the tree), the 1-minute load average
just before each run (other work on the machine shows there), their medians, and the
machine (nproc, CPU model, RAM) and date. `--scoring FILE`: the command writes a JSON object to FILE
(path given in $BENCH_SCORING_JSON) each run; its fields are kept per run (scoring-phase timings).
For sae-onnx eval, the "N requests in F forwards (T tokens) in S s" line is parsed too.
Memory guard: if the machine's MemAvailable falls below --min-avail-mib (1536) during a run, the
run's process group is killed and recorded as such (the machine is shared: better a failed baseline
than the kernel's OOM killer choosing someone else's process). Plain Python 3, no packages.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def machine():
    cpu = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        cpu = m.group(1).strip() if m else ""
        fam = re.search(r"CPU family:\s*(\d+)", out)
        mod = re.search(r"\nModel:\s*(\d+)", out)
        if fam and mod:
            cpu += f" (family {fam.group(1)} model {mod.group(1)}"
            flags = re.search(r"Flags:\s*(.+)", out)
            flags = flags.group(1).split() if flags else []
            cpu += "".join(f", {f}" for f in ("avx2", "avx512f", "avx512_bf16") if f in flags)
            hv = re.search(r"Hypervisor vendor:\s*(\S+)", out)
            cpu += f", {hv.group(1)} guest)" if hv else ")"
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 1024**2, 1)}


def build_info():
    """The checkout the binary came from: HEAD and how many files under src/ differ from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "src", "Cargo.toml"],
                               capture_output=True, text=True).stdout.strip().splitlines()
        binary = os.path.join(repo, "target", "release", "sae-onnx")
        built = datetime.datetime.fromtimestamp(os.path.getmtime(binary), datetime.timezone.utc) \
            .strftime("%Y-%m-%d %H:%M UTC") if os.path.exists(binary) else None
        return {"head": head, "src_files_changed": len(dirty), "binary_built": built}
    except OSError:
        return {}


def parse_time(path):
    text = open(path).read()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    parts = [float(p) for p in wall.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    user = float(re.search(r"User time \(seconds\): (\S+)", text).group(1))
    sys_ = float(re.search(r"System time \(seconds\): (\S+)", text).group(1))
    return {"wall_s": secs, "rss_kib": rss, "user_s": user, "sys_s": sys_}


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 1 << 30


EVAL_LINE = re.compile(r"(\d+) requests in (\d+) forwards \((\d+) tokens(?:, (\d+) of them from shared-prefix caches)?\) "
                       r"in ([\d.]+)s(?: \(opening the model ([\d.]+)s, scoring ([\d.]+)s\))?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", default=None)
    ap.add_argument("--scoring", default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--min-avail-mib", type=int, default=1536)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        sys.exit("no command")
    logdir = os.path.splitext(a.out)[0] + ".logs"
    os.makedirs(logdir, exist_ok=True)
    runs = []
    rc = 0
    for k in range(a.runs):
        if a.before:
            subprocess.run(a.before, shell=True, check=True)
        env = dict(os.environ)
        if a.scoring:
            env["BENCH_SCORING_JSON"] = a.scoring
            if os.path.exists(a.scoring):
                os.remove(a.scoring)
        log = os.path.join(logdir, re.sub(r"[^A-Za-z0-9.,+_ -]", "_", a.name) + f".run{k + 1}.log")
        load0 = os.getloadavg()[0]
        with tempfile.NamedTemporaryFile(suffix=".time", delete=False) as t:
            tpath = t.name
        guard = None
        timed = os.path.exists("/usr/bin/time")
        t0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "w") as lf:
            prefix = ["/usr/bin/time", "-v", "-o", tpath] if timed else []
            p = subprocess.Popen(prefix + cmd, stdout=lf, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True)
            while p.poll() is None:
                avail = mem_available_mib()
                if avail < a.min_avail_mib:
                    guard = f"killed by the memory guard: MemAvailable {avail} MiB < {a.min_avail_mib} MiB"
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    break
                time.sleep(0.25)
        rc = p.returncode
        if guard:
            with open(log, "a") as lf:
                lf.write("\n" + guard + "\n")
            print("  " + guard, file=sys.stderr)
        if guard:
            r = {"wall_s": 0.0, "rss_kib": 0, "user_s": 0.0, "sys_s": 0.0}
        elif timed:
            r = parse_time(tpath)
        else:
            # No GNU time (the GPU image has none): wall clock here, CPU times from the kernel, and
            # the largest waited-for process's peak RSS (a maximum over all runs so far).
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = {"wall_s": time.perf_counter() - t0, "rss_kib": ru.ru_maxrss, "user_s": ru.ru_utime - ru0.ru_utime,
                 "sys_s": ru.ru_stime - ru0.ru_stime, "timer": "python (no /usr/bin/time)"}
        if guard:
            r["guard"] = guard
        os.remove(tpath)
        r["loadavg_before"] = load0
        r["rc"] = rc
        text = open(log, errors="replace").read()
        m = EVAL_LINE.search(text)
        if m:
            r["eval"] = {"requests": int(m.group(1)), "forwards": int(m.group(2)),
                         "tokens": int(m.group(3)), "seconds": float(m.group(5))}
            if m.group(4):
                r["eval"]["shared_prefix_tokens"] = int(m.group(4))
            if m.group(6):
                r["eval"]["session_s"] = float(m.group(6))
                r["eval"]["scoring_s"] = float(m.group(7))
        if a.scoring and os.path.exists(a.scoring):
            with open(a.scoring) as f:
                r["scoring"] = json.load(f)
        runs.append(r)
        print(f"  {a.name} run {k + 1}: {r['wall_s']:.2f} s, peak RSS {r['rss_kib'] / 1024:.0f} MiB, rc {rc}",
              file=sys.stderr, flush=True)
        if rc != 0:
            r["log_tail"] = text[-3000:]
            print(text[-3000:], file=sys.stderr)
            break
    ok = [r for r in runs if r["rc"] == 0]
    rec = {
        "name": a.name,
        "cmd": shlex.join(cmd),
        "before": a.before,
        "note": a.note,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "build": build_info(),
        "runs": runs,
        "ok": rc == 0,
        "median_wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
        "median_rss_mib": statistics.median(r["rss_kib"] for r in ok) / 1024 if ok else None,
    }
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
