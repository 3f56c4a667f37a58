#!/usr/bin/env python3
"""Checks the task YAMLs of this folder against lm-evaluation-harness 0.4.13 itself, and writes
tests/fixtures/tasks_golden.json, which tests/it/eval_tasks.rs replays against sae-onnx.

Usage (from anywhere; needs the lm-eval 0.4.13 venv described in tests/fixtures/requirements.txt):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $PYTHON tasks/verify_with_lm_eval.py
    ($PYTHON: the reference interpreter, with tests/fixtures/requirements.txt installed; default python3)

Nothing is downloaded. The Hugging Face datasets of the tasks are replaced by small made-up ones
with the real datasets' columns and types (and awkward strings: Python-only whitespace, quotes,
backslashes, brackets, non-ASCII case mappings, ...), by swapping `datasets.load_dataset` for a
function that returns them. Then:

1. Configs: every YAML here, read by lm-eval's own YAML loader (includes resolved), equals the
   lm-eval file it comes from, key for key, except for the differences listed in README.md
   (DIFFERENCES below), and every tag kept here names the same tasks as in lm-eval.
2. Prompts: for every task, lm-eval builds its requests (`build_all_requests`, after applying
   `num_fewshot` and the few-shot seed exactly as `simple_evaluate` does) twice: from its own
   task files and from ours (TaskManager(include_path=tasks/, include_defaults=False)). The
   requests must be identical: same context, same continuations, same targets, in order.
   hellaswag is the interesting one: lm-eval's version runs Python (`process_docs`), ours Jinja.
3. Groups: `mmlu`, its four categories, `wmdp` and the tag `ai2_arc` expand to the same tasks in
   the same order either way.

The golden file holds the made-up documents (as JSON, and as the parquet files that the Rust test
lays out as a Hugging Face cache), lm-eval's requests for each run, and the group structure.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import datasets  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from datasets import ClassLabel, Features, Sequence, Value  # noqa: E402

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._index import Kind, TaskIndex  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOLDEN = ROOT / "tests" / "fixtures" / "tasks_golden.json"
LM_EVAL_TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"
SEED = 1234  # lm-eval's default fewshot_random_seed

# Our YAML (relative to tasks/) -> the lm-eval file it reproduces (relative to lm_eval/tasks/).
SOURCES = {
    "arc/arc_easy.yaml": "arc/arc_easy.yaml",
    "arc/arc_challenge.yaml": "arc/arc_challenge.yaml",
    "hellaswag/hellaswag.yaml": "hellaswag/hellaswag.yaml",
    "openbookqa/openbookqa.yaml": "openbookqa/openbookqa.yaml",
    "piqa/piqa.yaml": "piqa/piqa.yaml",
    "sciq/sciq.yaml": "sciq/sciq.yaml",
    "super_glue/boolq/default.yaml": "super_glue/boolq/default.yaml",
    "wmdp/_wmdp.yaml": "wmdp/_wmdp.yaml",
    "wmdp/wmdp_bio.yaml": "wmdp/wmdp_bio.yaml",
    "wmdp/wmdp_chem.yaml": "wmdp/wmdp_chem.yaml",
    "wmdp/wmdp_cyber.yaml": "wmdp/wmdp_cyber.yaml",
}
for _p in sorted((HERE / "mmlu" / "default").glob("*.yaml")):
    SOURCES[f"mmlu/default/{_p.name}"] = f"mmlu/default/{_p.name}"

# The only config keys allowed to differ from lm-eval's (README.md explains each).
DIFFERENCES = {
    "super_glue/boolq/default.yaml": {"tag"},
    "hellaswag/hellaswag.yaml": {"tag", "process_docs", "doc_to_text", "doc_to_choice"},
}
# Tags of lm-eval that we do not ship, because only some of their tasks are here.
DROPPED_TAGS = {"super-glue-lm-eval-v1", "multiple_choice"}

# ----------------------------------------------------------------------------- made-up data

# Strings that trip up re-implementations: Python's whitespace set (\x1c-\x1f, \x85, \u2028 are
# whitespace to str.strip but not to Rust's char::is_whitespace), quotes and backslashes (Python
# repr / ast.literal_eval of rendered choice lists), Jinja-looking text, non-ASCII case mappings,
# non-printable characters, digits.
AWKWARD = [
    "plain words",
    "  leading and trailing spaces  ",
    "\ttabs\tand\nnewlines\n",
    "\u00a0no-break\u00a0space\u2003em\u3000ideographic\u2028",
    "\x1cfile\x1dgroup\x1erecord\x1funit\x85next",
    "it's",
    'say "hi"',
    "both ' and \"",
    "back\\slash \\n not a newline",
    "{{ not_a_var }} {% raw %}",
    "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f642",
    "stra\u00dfe \u01c6ungla \ufb01ne \u03a3\u0391\u03a3 \u0130stanbul",
    "zero\u200bwidth bell\x07 nul\x00",
    "42",
    "",
    "x",
    "ends with question?",
    "[bracketed] text [title] more",
]


class Maker:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def text(self, words: int = 4) -> str:
        """A short random phrase, sometimes with an awkward string mixed in."""
        vocab = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
        parts = [self.rnd.choice(vocab) for _ in range(self.rnd.randint(1, words))]
        if self.rnd.random() < 0.5:
            parts.insert(self.rnd.randint(0, len(parts)), self.rnd.choice(AWKWARD))
        return " ".join(parts)

    def awkward(self, i: int) -> str:
        return AWKWARD[i % len(AWKWARD)]


def mmlu_docs(m: Maker, subject: str, n: int, offset: int) -> list[dict]:
    return [
        {
            "question": m.awkward(offset + i) + " " + m.text() if i % 2 == 0 else m.text(6),
            "subject": subject,
            "choices": [m.text(3), m.awkward(offset + i + 3), m.text(2), m.text(3)],
            "answer": (offset + i) % 4,
        }
        for i in range(n)
    ]


def wmdp_docs(m: Maker, n: int) -> list[dict]:
    return [
        {
            "answer": i % 4,
            "question": m.awkward(i) + m.text(),
            "choices": [m.text(3), m.text(2), m.awkward(i + 5), m.text(1)],
        }
        for i in range(n)
    ]


def arc_docs(m: Maker, prefix: str, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        k = [4, 3, 5, 4][i % 4]
        labels = list("ABCDE"[:k]) if i % 3 else [str(j + 1) for j in range(k)]
        texts = [m.text(3) for _ in range(k)]
        texts[i % k] = m.awkward(i)
        docs.append(
            {
                "id": f"{prefix}_{i}",
                "question": m.text(6) + (" " + m.awkward(i + 1) if i % 2 else ""),
                "choices": {"text": texts, "label": labels},
                "answerKey": labels[(i * 7) % k],
            }
        )
    return docs


def boolq_docs(m: Maker, n: int, start: int) -> list[dict]:
    return [
        {
            "question": m.text(5) if i % 3 else m.awkward(i),
            "passage": m.text(12) + " " + m.awkward(i + 2),
            "idx": start + i,
            "label": (i * 5) % 2,
        }
        for i in range(n)
    ]


def openbookqa_docs(m: Maker, prefix: str, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        labels = ["A", "B", "C", "D"]
        key = labels[(i * 3) % 4]
        docs.append(
            {
                "id": f"{prefix}-{i}",
                "question_stem": m.text(8) if i % 2 else m.awkward(i),
                "choices": {"text": [m.text(2), m.awkward(i + 4), m.text(3), m.text(1)], "label": labels},
                # lm-eval lstrips the key; some rows of the real data carry a space
                "answerKey": (" " + key) if i % 4 == 1 else key,
            }
        )
    return docs


def sciq_docs(m: Maker, n: int) -> list[dict]:
    return [
        {
            "question": m.text(6),
            "distractor3": m.text(2),
            "distractor1": m.awkward(i + 1),
            "distractor2": m.text(1),
            "correct_answer": m.awkward(i + 7) if i % 2 else m.text(2),
            "support": ["", "\n " + m.text(10), "  " + m.awkward(i), m.text(9)][i % 4],
        }
        for i in range(n)
    ]


def piqa_docs(m: Maker, n: int) -> list[dict]:
    return [
        {
            "goal": m.text(6) if i % 2 else m.awkward(i),
            "sol1": m.text(4),
            "sol2": m.awkward(i + 2) + " " + m.text(2),
            "label": (i * 3) % 2,
        }
        for i in range(n)
    ]


# What hellaswag's preprocessing reacts to: brackets, " [title]", double spaces, stripping, and
# the case mapping of ctx_b.capitalize() (title case of the first letter, lower case after it).
HELLASWAG_CTX_B = [
    "",
    "then he starts",
    "Then He Starts",
    "\u00dfe starts",
    "\u01c6ungla is",
    "\ufb01ne then",
    "\u03a3\u0391\u03a3 \u039f\u03a3",
    "\u0130STANBUL",
    " leading space",
    "[title] inside",
    "\x1fcontrol first",
    "\u00e9COLE",
]
HELLASWAG_ENDINGS = [
    "  a [title] b ",
    "[header] x  y",
    "two  spaces   three",
    "q\\'\"",
    "[unclosed bracket",
    "[a\nb] newline inside brackets",
    "[one][two] [three]",
    " [title] at start",
    "nested [outer [inner] still] out",
    "\u00a0nbsp\u00a0",
    "plain",
    "",
    "\x1fpython-only whitespace around\x85",
]


def hellaswag_docs(m: Maker, n: int, split: str, start: int) -> list[dict]:
    docs = []
    for i in range(n):
        j = start + i
        ctx_a = [m.text(5), "A man [title] is  here.", "  spaced " + m.text(2) + " ", m.awkward(j)][j % 4]
        ctx_b = HELLASWAG_CTX_B[j % len(HELLASWAG_CTX_B)]
        docs.append(
            {
                "ind": j,
                "activity_label": ["Removing ice from car", "\x1c\u2028Home and Garden", "[x] label", m.text(2)][j % 4],
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": ctx_a + " " + ctx_b,
                "endings": [HELLASWAG_ENDINGS[(j + k) % len(HELLASWAG_ENDINGS)] + (" " + m.text(2) if k else "") for k in range(4)],
                "source_id": f"activitynet~v_{j}",
                "split": split if split != "validation" else "val",
                "split_type": ["indomain", "zeroshot"][j % 2],
                "label": str((j * 3) % 4) if split != "test" else "",
            }
        )
    return docs


MMLU_FEATURES = Features(
    {
        "question": Value("string"),
        "subject": Value("string"),
        "choices": Sequence(Value("string")),
        "answer": ClassLabel(names=["A", "B", "C", "D"]),
    }
)
WMDP_FEATURES = Features(
    {"answer": Value("int64"), "question": Value("string"), "choices": Sequence(Value("string"))}
)
CHOICES_FEATURE = Sequence({"text": Value("string"), "label": Value("string")})
ARC_FEATURES = Features(
    {"id": Value("string"), "question": Value("string"), "choices": CHOICES_FEATURE, "answerKey": Value("string")}
)
BOOLQ_FEATURES = Features(
    {
        "question": Value("string"),
        "passage": Value("string"),
        "idx": Value("int32"),
        "label": ClassLabel(names=["False", "True"]),
    }
)
OPENBOOKQA_FEATURES = Features(
    {"id": Value("string"), "question_stem": Value("string"), "choices": CHOICES_FEATURE, "answerKey": Value("string")}
)
SCIQ_FEATURES = Features(
    {k: Value("string") for k in ["question", "distractor3", "distractor1", "distractor2", "correct_answer", "support"]}
)
PIQA_FEATURES = Features(
    {"goal": Value("string"), "sol1": Value("string"), "sol2": Value("string"), "label": Value("int64")}
)
HELLASWAG_FEATURES = Features(
    {
        "ind": Value("int32"),
        "activity_label": Value("string"),
        "ctx_a": Value("string"),
        "ctx_b": Value("string"),
        "ctx": Value("string"),
        "endings": Sequence(Value("string")),
        "source_id": Value("string"),
        "split": Value("string"),
        "split_type": Value("string"),
        "label": Value("string"),
    }
)

# Subjects checked 5-shot (cais/mmlu's dev split has 5 documents per subject); the others are
# checked 0- and 1-shot, which keeps the golden file small: only the description and the data
# differ between subjects.
MMLU_FIVE_SHOT = ["abstract_algebra", "high_school_government_and_politics", "us_foreign_policy"]
MMLU_SUBJECTS = sorted(
    p.name[len("mmlu_") : -len(".yaml")] for p in (HERE / "mmlu" / "default").glob("mmlu_*.yaml")
)


def fake_datasets() -> dict[tuple[str, str | None], dict]:
    """(dataset_path, dataset_name) -> {"features", "splits": {split: docs}, "files": {split: repo file}}.

    `files` says where each split's parquet file lies in the fake Hub repository: the main branch
    (`name/split-00000-of-00001.parquet`, as the datasets' own parquet uploads are named) or the
    `refs/convert/parquet` branch (`config/split/0000.parquet`), so that both ways of
    sae-onnx's hub loader are used.
    """
    m = Maker(20240613)
    out: dict[tuple[str, str | None], dict] = {}

    def main_files(prefix: str, splits) -> dict:
        return {s: {"revision": "main", "path": f"{prefix}/{s}-00000-of-00001.parquet"} for s in splits}

    def converted(config: str, splits) -> dict:
        return {s: {"revision": "refs/convert/parquet", "path": f"{config}/{s}/0000.parquet"} for s in splits}

    for i, subject in enumerate(MMLU_SUBJECTS):
        dev = 5 if subject in MMLU_FIVE_SHOT else 2
        splits = {"test": mmlu_docs(m, subject, 2, i), "dev": mmlu_docs(m, subject, dev, i + 2)}
        out[("cais/mmlu", subject)] = {"features": MMLU_FEATURES, "splits": splits, "files": main_files(subject, splits)}
    for name in ["wmdp-bio", "wmdp-chem", "wmdp-cyber"]:
        splits = {"test": wmdp_docs(m, 4)}
        out[("cais/wmdp", name)] = {"features": WMDP_FEATURES, "splits": splits, "files": main_files(name, splits)}
    for name in ["ARC-Easy", "ARC-Challenge"]:
        splits = {s: arc_docs(m, f"{name}/{s}", n) for s, n in [("train", 6), ("validation", 3), ("test", 8)]}
        out[("allenai/ai2_arc", name)] = {"features": ARC_FEATURES, "splits": splits, "files": main_files(name, splits)}
    splits = {"train": boolq_docs(m, 6, 0), "validation": boolq_docs(m, 6, 100), "test": boolq_docs(m, 2, 200)}
    splits["validation"][3] = dict(splits["train"][0])  # an eval doc that is also a few-shot doc
    for d in splits["test"]:
        d["label"] = -1
    out[("aps/super_glue", "boolq")] = {"features": BOOLQ_FEATURES, "splits": splits, "files": converted("boolq", splits)}
    splits = {s: openbookqa_docs(m, s, n) for s, n in [("train", 6), ("validation", 3), ("test", 8)]}
    out[("allenai/openbookqa", "main")] = {"features": OPENBOOKQA_FEATURES, "splits": splits, "files": main_files("main", splits)}
    splits = {s: sciq_docs(m, n) for s, n in [("train", 6), ("validation", 3), ("test", 8)]}
    out[("allenai/sciq", None)] = {"features": SCIQ_FEATURES, "splits": splits, "files": main_files("data", splits)}
    splits = {s: piqa_docs(m, n) for s, n in [("train", 6), ("validation", 8), ("test", 2)]}
    splits["validation"][2] = dict(splits["train"][4])
    for d in splits["test"]:
        d["label"] = -1
    out[("baber/piqa", None)] = {"features": PIQA_FEATURES, "splits": splits, "files": main_files("data", splits)}
    splits = {
        "train": hellaswag_docs(m, 6, "train", 0),
        "validation": hellaswag_docs(m, 12, "validation", 6),
        "test": hellaswag_docs(m, 2, "test", 18),
    }
    splits["validation"][5] = dict(splits["train"][1])
    out[("Rowan/hellaswag", None)] = {"features": HELLASWAG_FEATURES, "splits": splits, "files": converted("default", splits)}

    for entry in out.values():
        entry["datasets"] = datasets.DatasetDict(
            {s: datasets.Dataset.from_list(docs, features=entry["features"]) for s, docs in entry["splits"].items()}
        )
    return out


FAKE = fake_datasets()
LOADS: list[tuple[str, str | None]] = []


def fake_load_dataset(path, name=None, **kwargs):
    LOADS.append((path, name))
    key = (path, name)
    if key not in FAKE:
        raise RuntimeError(f"no made-up data for dataset {path!r} config {name!r} (kwargs {kwargs})")
    return FAKE[key]["datasets"]


datasets.load_dataset = fake_load_dataset  # lm_eval.api.task calls datasets.load_dataset(...)


def parquet_b64(ds: datasets.Dataset, compact: bool) -> str:
    """The split as a parquet file written by pyarrow (as `datasets` writes them, without the
    schema metadata), base64. `compact`: no dictionary pages, no statistics (a third smaller)."""
    table = ds.data.table.replace_schema_metadata(None)
    buf = io.BytesIO()
    extra = {"use_dictionary": False, "write_statistics": False} if compact else {}
    pq.write_table(table, buf, store_schema=False, **extra)
    back = pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()
    assert back == ds.to_list(), "parquet round trip changed the documents"
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- checks

FAILURES: list[str] = []


def check(cond: bool, what: str) -> None:
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, file=sys.stderr)


def check_generated() -> None:
    """tasks/mmlu/default/ is what make_mmlu.py writes now."""
    sys.path.insert(0, str(HERE))
    import make_mmlu

    sys.path.pop(0)
    wanted = make_mmlu.files()
    on_disk = {p.name: p.read_text() for p in (HERE / "mmlu" / "default").iterdir()}
    check(wanted == on_disk, "tasks/mmlu/default/ is out of date: run tasks/make_mmlu.py")


def check_configs() -> None:
    for ours, theirs in SOURCES.items():
        a = load_yaml(HERE / ours, resolve_func=False)
        b = load_yaml(LM_EVAL_TASKS / theirs, resolve_func=False)
        allowed = DIFFERENCES.get(ours, set())
        keys = set(a) | set(b)
        differing = {k for k in keys if (k in a) != (k in b) or str(a.get(k)) != str(b.get(k)) or a.get(k) != b.get(k)}
        check(differing <= allowed, f"{ours}: keys {sorted(differing - allowed)} differ from lm-eval's {theirs}")
        check(allowed <= differing, f"{ours}: DIFFERENCES lists {sorted(allowed - differing)}, which do not differ")
    shipped = {str(p.relative_to(HERE)) for p in HERE.rglob("*.yaml")}
    check(shipped == set(SOURCES), f"YAMLs without a source entry: {sorted(shipped ^ set(SOURCES))}")

    ours_index = TaskIndex.build([HERE])
    theirs_index = TaskIndex.build([LM_EVAL_TASKS])
    for name, entry in ours_index.items():
        check(name in theirs_index, f"{name}: not a name in lm-eval")
        if name not in theirs_index:
            continue
        check(entry.kind == theirs_index[name].kind, f"{name}: {entry.kind} here, {theirs_index[name].kind} in lm-eval")
        if entry.kind == Kind.TAG:
            check(entry.tags == theirs_index[name].tags, f"tag {name}: {sorted(entry.tags)} here, {sorted(theirs_index[name].tags)} in lm-eval")
    for name in ours_index:
        if ours_index[name].kind == Kind.TASK:
            lost = {t for t, e in theirs_index.items() if e.kind == Kind.TAG and name in e.tags} - set(ours_index)
            check(lost <= DROPPED_TAGS, f"{name}: lm-eval tags {sorted(lost - DROPPED_TAGS)} are not shipped")


_MANAGERS: tuple[TaskManager, TaskManager] | None = None


def managers() -> tuple[TaskManager, TaskManager]:
    """lm-eval's task index (built once: it reads every YAML lm-eval has) and ours."""
    global _MANAGERS
    if _MANAGERS is None:
        _MANAGERS = (TaskManager(), TaskManager(include_path=str(HERE), include_defaults=False))
    return _MANAGERS


def requests(task, num_fewshot: int | None, seed: int) -> dict:
    """What lm-eval's simple_evaluate + evaluate make of one task: the same few-shot rules
    (a YAML `num_fewshot: 0` is never overridden), the seed, then build_all_requests."""
    requested = num_fewshot
    if num_fewshot is not None:
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=seed)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    docs = []
    for doc_id in sorted(by_doc):
        insts = sorted(by_doc[doc_id], key=lambda x: x.idx)
        doc = insts[0].doc
        context = insts[0].arguments[0]
        assert all(i.arguments[0] == context for i in insts), "multiple_choice contexts differ"
        choices = task.doc_to_choice(doc)
        target = task.doc_to_target(doc)
        docs.append(
            {
                "doc_id": doc_id,
                "context": context,
                "continuations": [i.arguments[1] for i in insts],
                "choices": list(choices),
                "target": target,
            }
        )
    return {
        "requested_num_fewshot": requested,
        "num_fewshot": task.get_config("num_fewshot"),
        "docs": docs,
    }


RUNS: list[tuple[str, int | None, int]] = []
for _s in MMLU_SUBJECTS:
    RUNS += [(f"mmlu_{_s}", None, SEED), (f"mmlu_{_s}", 1, SEED)]
    if _s in MMLU_FIVE_SHOT:
        RUNS += [(f"mmlu_{_s}", 5, SEED)]
for _t in ["wmdp_bio", "wmdp_chem", "wmdp_cyber"]:
    RUNS += [(_t, None, SEED)]
RUNS += [("wmdp_bio", 2, SEED)]  # lm-eval keeps wmdp's `num_fewshot: 0`
for _t in ["arc_easy", "arc_challenge", "boolq", "openbookqa", "sciq", "piqa", "hellaswag"]:
    RUNS += [(_t, None, SEED), (_t, 3, SEED)]
RUNS += [("arc_easy", 2, 42), ("hellaswag", 5, 42), ("piqa", 5, 7), ("boolq", 5, 3)]

GROUPS = ["mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other", "wmdp"]
TAGS = ["ai2_arc", "mmlu_stem_tasks", "mmlu_humanities_tasks", "mmlu_social_sciences_tasks", "mmlu_other_tasks"]


def check_prompts() -> list[dict]:
    runs = []
    for name, k, seed in RUNS:
        per = []
        for tm in managers():
            loaded = tm.load([name])["tasks"]
            assert list(loaded) == [name], loaded.keys()
            per.append(requests(loaded[name], k, seed))
        theirs, ours = per
        check(theirs == ours, f"{name} num_fewshot={k} seed={seed}: our YAML makes different requests in lm-eval")
        if theirs != ours:
            for a, b in zip(theirs["docs"], ours["docs"]):
                if a != b:
                    print("  lm-eval:", json.dumps(a, ensure_ascii=False)[:600], file=sys.stderr)
                    print("  ours:   ", json.dumps(b, ensure_ascii=False)[:600], file=sys.stderr)
                    break
        check(len(theirs["docs"]) > 0, f"{name}: no documents")
        runs.append({"task": name, "num_fewshot": k, "seed": seed, **theirs})
    return runs


def group_info(group) -> dict:
    cfg = group.to_dict()
    return {
        "children": list(group.child_names),
        "alias": cfg.get("group_alias"),
        "version": cfg.get("metadata", {}).get("version"),
        "aggregate_metric_list": [
            {"metric": m["metric"], "weight_by_size": m.get("weight_by_size", True)}
            for m in (cfg.get("aggregate_metric_list") or [])
        ],
    }


def check_groups() -> tuple[dict, dict]:
    groups = {}
    tags = {}
    theirs, ours = managers()
    for name in GROUPS:
        a, b = theirs.load([name]), ours.load([name])
        check(a["group_map"] == b["group_map"], f"group {name}: {b['group_map']} here, {a['group_map']} in lm-eval")
        check(list(a["tasks"]) == list(b["tasks"]), f"group {name}: tasks in another order")
        ga, gb = group_info(a["groups"][name]), group_info(b["groups"][name])
        check(ga == gb, f"group {name}: {gb} here, {ga} in lm-eval")
        groups[name] = {**ga, "tasks": list(a["tasks"])}
    for name in TAGS:
        a, b = theirs.load([name]), ours.load([name])
        check(list(a["tasks"]) == list(b["tasks"]), f"tag {name}: {list(b['tasks'])} here, {list(a['tasks'])} in lm-eval")
        tags[name] = list(a["tasks"])
    return groups, tags


def task_info(names: list[str]) -> dict:
    """What lm-eval reports about each task besides its prompts: version, metrics, output type."""
    theirs, _ = managers()
    out = {}
    for name in names:
        task = theirs.load([name])["tasks"][name]
        cfg = task.config
        out[name] = {
            "version": (cfg.metadata or {}).get("version"),
            "output_type": cfg.output_type,
            "metrics": [m["metric"] for m in cfg.metric_list],
            "dataset_path": cfg.dataset_path,
            "dataset_name": cfg.dataset_name,
        }
    return out


def main() -> None:
    datasets.disable_progress_bars()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    sys.dont_write_bytecode = True
    check_generated()
    check_configs()
    runs = check_prompts()
    groups, tags = check_groups()

    index = TaskIndex.build([HERE])
    golden = {
        "about": "Made by tasks/verify_with_lm_eval.py with lm-eval "
        + getattr(lm_eval, "__version__", "?")
        + ": made-up documents with the real columns of each dataset, and the requests lm-eval 0.4.13 builds "
        "for them from its own task files. Checked by tests/eval_tasks.rs.",
        "seed_default": SEED,
        "tasks": task_info(sorted(n for n, e in index.items() if e.kind == Kind.TASK)),
        "groups": groups,
        "tags": tags,
        "all_groups": sorted(n for n, e in index.items() if e.kind == Kind.GROUP),
        "all_tags": {n: sorted(e.tags) for n, e in sorted(index.items()) if e.kind == Kind.TAG},
        "datasets": [
            {
                "path": path,
                "name": name,
                "splits": {
                    split: {
                        "file": entry["files"][split],
                        "docs": entry["datasets"][split].to_list(),
                        "parquet_base64": parquet_b64(entry["datasets"][split], compact=path == "cais/mmlu"),
                    }
                    for split in entry["splits"]
                },
            }
            for (path, name), entry in FAKE.items()
        ],
        "runs": runs,
    }
    unused = set(FAKE) - set(LOADS)
    check(not unused, f"made-up datasets no task loaded: {sorted(map(str, unused))}")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed; {GOLDEN} not written", file=sys.stderr)
        sys.exit(1)
    GOLDEN.write_text(json.dumps(golden, indent=1, ensure_ascii=True) + "\n")
    n_docs = sum(len(r["docs"]) for r in runs)
    print(
        f"OK: {len(SOURCES)} YAMLs equal lm-eval's (up to README's differences); {len(runs)} runs, "
        f"{n_docs} documents: identical requests from lm-eval's task files and ours; "
        f"{len(groups)} groups and {len(tags)} tags expand alike. Wrote {GOLDEN.relative_to(ROOT)} "
        f"({GOLDEN.stat().st_size // 1024} KiB)."
    )


if __name__ == "__main__":
    main()
