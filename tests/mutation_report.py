"""Mutation-testing records for ``tests/mutation.sh`` and ``tests/MUTATION.md``.

``record MODULE WORKDIR SECONDS TESTS`` reads a finished run in WORKDIR (``mutmut
results --all true``, and ``mutmut show`` for each survivor) into
``tests/mutation/MODULE.json``; ``render`` rebuilds ``tests/MUTATION.md`` from
every record and from ``tests/mutation/equivalent.txt`` (one surviving mutant per
line, its name, whitespace, then why it cannot change behaviour).
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "mutation"
EQUIVALENT = RECORDS / "equivalent.txt"
REPORT = HERE / "MUTATION.md"
# mutmut's outcomes that count as the tests catching the mutant.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def parse_results(text: str) -> dict[str, str]:
    """Returns {mutant name: outcome} from ``mutmut results --all true``."""
    outcomes = {}
    for line in text.splitlines():
        name, sep, outcome = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            outcomes[name] = outcome.strip()
    return outcomes


def equivalent_mutants() -> dict[str, str]:
    """Returns {mutant name: reason} from ``equivalent.txt``."""
    if not EQUIVALENT.exists():
        return {}
    reasons = {}
    for line in EQUIVALENT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            reasons[name] = reason.strip()
    return reasons


def _mutmut(workdir: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _changed_lines(diff: str) -> list[str]:
    return [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def _record_path(module: str) -> Path:
    return RECORDS / (module.replace("/", ".") + ".json")


def survivors(module: str) -> list[str]:
    """The mutants of MODULE's last record that survived and are not judged equivalent."""
    path = _record_path(module)
    if not path.exists():
        sys.exit(f"mutation_report: no record {path}; run `bash tests/mutation.sh {module}` first")
    equivalent = equivalent_mutants()
    outcomes = json.loads(path.read_text())["outcomes"]
    return sorted(n for n, o in outcomes.items() if o not in KILLED and n not in equivalent)


def record(module: str, workdir: str, seconds: str, tests: str, merge: bool = False) -> None:
    """Writes MODULE's record from mutmut's results in WORKDIR.

    With ``merge``, WORKDIR's run covered only the previous record's survivors
    (``SURVIVORS_ONLY=1 bash tests/mutation.sh MODULE``, after tests were added):
    their new outcomes replace the old ones, every other outcome stands.
    """
    outcomes = parse_results(_mutmut(workdir, "results", "--all", "true"))
    if not outcomes:
        sys.exit(f"mutation_report: no mutants in {workdir}; did mutmut run?")
    reruns = []
    if merge:
        old = json.loads(_record_path(module).read_text())
        rerun = {n: o for n, o in outcomes.items() if o != "not checked"}
        if set(outcomes) != set(old["outcomes"]):
            sys.exit(f"mutation_report: {module}'s mutants changed since its record; run it whole")
        reruns = [
            *old.get("reruns", []),
            {
                "date": datetime.date.today().isoformat(),
                "mutants": len(rerun),
                "seconds": int(seconds),
            },
        ]
        outcomes = {**old["outcomes"], **rerun}
        seconds = str(old["seconds"] + int(seconds))
    diffs = {
        name: _changed_lines(_mutmut(workdir, "show", name))
        for name, outcome in outcomes.items()
        if outcome not in KILLED
    }
    RECORDS.mkdir(exist_ok=True)
    path = _record_path(module)
    payload = {
        "module": f"keras_densenet/{module}.py",
        "tests": tests.split(),
        "seconds": int(seconds),
        "date": datetime.date.today().isoformat(),
        "outcomes": outcomes,
        "survivor_diffs": diffs,
    }
    if reruns:
        payload["reruns"] = reruns
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def freeze_keras_inits(path: str) -> int:
    """Marks every line of each ``__init__`` in PATH ``# pragma: no mutate``; returns how many.

    For modules that define Keras layers, in the scratch copy only: mutmut wraps a
    mutated method in a ``functools.wraps`` trampoline, and Keras'
    ``Operation.__new__`` reads ``inspect.getfullargspec(cls.__init__)``, which does
    not follow ``__wrapped__``: the mutated module would not import. A method without
    mutants gets no trampoline. A comment goes only where a physical line ends
    outside a string (tokenize's NEWLINE and NL); an existing comment is prefixed.
    """
    import ast
    import io
    import tokenize

    source = Path(path).read_text()
    spans = [
        range(node.lineno, node.end_lineno + 1)
        for cls in ast.walk(ast.parse(source))
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    ]
    inside = {n for span in spans for n in span}
    ends, comments = set(), {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NEWLINE, tokenize.NL):
            ends.add(token.start[0])
        elif token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.start[1]
    lines = source.splitlines(keepends=True)
    marked = 0
    for number in sorted(inside & ends):
        line = lines[number - 1]
        body = line.rstrip("\n")
        if not body.strip():
            continue
        if number in comments:
            at = comments[number]
            body = body[:at] + "# pragma: no mutate; " + body[at + 1 :].lstrip()
        else:
            body += "  # pragma: no mutate"
        lines[number - 1] = body + line[len(line.rstrip("\n")) :]
        marked += 1
    Path(path).write_text("".join(lines))
    return marked


def render() -> None:
    equivalent = equivalent_mutants()
    rows, survivors, judged = [], [], []
    for path in sorted(RECORDS.glob("*.json")):
        data = json.loads(path.read_text())
        outcomes = data["outcomes"]
        killed = sum(o in KILLED for o in outcomes.values())
        equiv = [n for n, o in outcomes.items() if o not in KILLED and n in equivalent]
        live = [n for n, o in outcomes.items() if o not in KILLED and n not in equivalent]
        scored = len(outcomes) - len(equiv)
        # One decimal, rounded down: 307 of 308 is 99.6%, never a 100% with a survivor.
        score = math.floor(1000.0 * killed / scored) / 10 if scored else 100.0
        rows.append(
            f"| `{data['module']}` | {len(outcomes)} | {killed} | {len(equiv)} | "
            f"{len(live)} | **{score:.1f}%** | {' '.join(data['tests'])} | "
            f"{data['seconds'] // 60} min | {data['date']}"
            f"{' (survivors rerun)' if data.get('reruns') else ''} |"
        )
        for n in sorted(live):
            survivors.append(f"- `{n}` ({outcomes[n]})")
            survivors += [f"  `{line.strip()}`" for line in data["survivor_diffs"].get(n, [])]
        judged += [f"- `{n}`: {equivalent[n]}" for n in sorted(equiv)]
    lines = [
        "# Mutation testing",
        "",
        "Generated by `bash tests/mutation.sh [MODULE ...]` (mutmut, pinned in the `test`",
        "extra); do not edit by hand. Score = killed / (mutants - judged equivalent); a",
        "mutant with no test reaching it counts as surviving. Machine: "
        f"{platform.machine()}, Python {platform.python_version()}.",
        "",
        "| module | mutants | killed | equivalent | surviving | score | tests | time | run |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Surviving mutants (the lines each one changes)",
        "",
        *(survivors or ["None."]),
        "",
        "## Judged equivalent (`tests/mutation/equivalent.txt`)",
        "",
        *(judged or ["None."]),
        "",
    ]
    tmp = REPORT.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(REPORT)


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 6:
        record(*sys.argv[2:])
    elif sys.argv[1:3] == ["record", "--merge"] and len(sys.argv) == 7:
        record(*sys.argv[3:], merge=True)
    elif sys.argv[1:2] == ["survivors"] and len(sys.argv) == 3:
        print("\n".join(survivors(sys.argv[2])))
    elif sys.argv[1:] == ["render"]:
        render()
    elif sys.argv[1:2] == ["freeze-keras-inits"] and len(sys.argv) == 3:
        print(f"mutation_report: {freeze_keras_inits(sys.argv[2])} __init__ lines not mutated")
    else:
        sys.exit(
            "usage: mutation_report.py record [--merge] MODULE RESULTS SECONDS TESTS | render"
            " | survivors MODULE"
            " | freeze-keras-inits FILE"
        )
