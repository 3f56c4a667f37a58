"""What `--session-cache` should store for the CPU's prepacked weights: measured, not assumed.

    python benches/session_cache_prepack.py MODEL.onnx [--threads 2] [--work DIR]

MODEL is a decoding graph (`sae-onnx export --kv-cache`). Its optimised graph is saved twice, as
the session cache saves it (ORT_ENABLE_ALL, initializers of 1 KiB and more in a data file): plain,
and with `session.save_external_prepacked_constant_initializers=1`. Both are then opened with
optimisation off, three ways:

  packed at load   the plain graph; ONNX Runtime packs the matrix weights while opening
  saved packed     the graph saved with its packed weights; they are mapped from the file
  no prepacking    the plain graph with `session.disable_prepacking=1`

and run on a prefill, a suffix after a cached prefix, and one-token decoding steps of 1 and 8
rows, in turn (A B C A B C ...) so that a change in the machine's load hits all three alike.
Printed: each way's open time, its median run time per case with the ratio to "packed at load",
and whether its outputs are bitwise equal to that way's. Needs onnxruntime and numpy.

The open times here are in one process after the saves, which leave freed memory to reuse: they
understate what packing costs a fresh process, which must fault in and zero new pages for every
packed matrix. Time whole `sae-onnx eval --session-cache` processes for that.
"""

import argparse
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort


def options(level, threads, **config):
    o = ort.SessionOptions()
    o.graph_optimization_level = level
    o.intra_op_num_threads = threads
    for key, value in config.items():
        o.add_session_config_entry(key, value)
    return o


def save_optimised(model, path, threads, **config):
    o = options(
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        threads,
        **{
            "session.optimized_model_external_initializers_file_name": os.path.basename(path) + ".data",
            "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
        },
        **config,
    )
    o.optimized_model_filepath = path
    ort.InferenceSession(model, o)


def open_timed(path, threads, **config):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    session = ort.InferenceSession(path, options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, threads, **config))
    seconds = time.perf_counter() - start
    return session, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def feeds(session, rows, tokens, past, rng):
    shapes = {i.name: i.shape for i in session.get_inputs()}
    vocab = 500  # below every benchmark checkpoint's vocabulary (the tiny tokenizer's 512)
    f = {
        "input_ids": rng.integers(2, vocab, (rows, tokens)).astype(np.int64),
        "attention_mask": np.ones((rows, past + tokens), np.int64),
    }
    for name, shape in shapes.items():
        if name.startswith("past_key_values."):
            f[name] = rng.standard_normal((rows, shape[1], past, shape[3])).astype(np.float32)
    unknown = set(shapes) - set(f)
    if unknown:
        raise SystemExit(f"inputs this script does not feed: {sorted(unknown)} (a decoding graph is expected)")
    return f


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="folder for the two saved graphs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="prepack-")
    os.makedirs(work, exist_ok=True)
    plain, packed = os.path.join(work, "plain.onnx"), os.path.join(work, "packed.onnx")
    for path, config in [(plain, {}), (packed, {"session.save_external_prepacked_constant_initializers": "1"})]:
        if not os.path.exists(path):
            save_optimised(args.model, path, args.threads, **config)
        print(f"{os.path.basename(path)}.data: {os.path.getsize(path + '.data') / 2**20:.0f} MiB")
    ways = {
        "packed at load": (plain, {}),
        "saved packed": (packed, {}),
        "no prepacking": (plain, {"session.disable_prepacking": "1"}),
    }
    sessions = {}
    for way, (path, config) in ways.items():
        sessions[way], seconds, faults = open_timed(path, args.threads, **config)
        print(f"open, {way:15s} {seconds:6.3f} s, {faults} page faults")
    rng = np.random.default_rng(0)
    some = next(iter(sessions.values()))
    cases = [
        ("prefill 8x256", feeds(some, 8, 256, 0, rng), 5),
        ("suffix 8x32 after 256", feeds(some, 8, 32, 256, rng), 10),
        ("decode 1 row after 256", feeds(some, 1, 1, 256, rng), 40),
        ("decode 8 rows after 256", feeds(some, 8, 1, 256, rng), 30),
    ]
    reference = "packed at load"
    for case, f, reps in cases:
        outputs = {way: s.run(None, f) for way, s in sessions.items()}
        times = {way: [] for way in sessions}
        for _ in range(reps):
            for way, s in sessions.items():
                start = time.perf_counter()
                s.run(None, f)
                times[way].append(time.perf_counter() - start)
        base = statistics.median(times[reference])
        for way in sessions:
            median = statistics.median(times[way])
            equal = all(np.array_equal(a, b) for a, b in zip(outputs[way], outputs[reference]))
            print(f"{case:24s} {way:15s} {median * 1000:9.2f} ms  x{median / base:.3f}  bitwise equal: {equal}")


if __name__ == "__main__":
    main()
