"""Summarise a mutmut run: killed and surviving mutants per module, and the mutation score.

Run by bench/mutation.sh in the scratch copy where `mutmut run` ran. A surviving mutant whose
diff changes nothing but string literals (an error or log message), or only lines inside a
logging call, is counted apart ("msg-only"): it does not change a number or a decision. The score
is printed both ways.

    python bench/mutation_report.py [--list]     # --list: print each surviving mutant's diff
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import tokenize
from collections import Counter, defaultdict


def mutant_results():
    """(name, status, diff or None, source path) of every mutant, through mutmut's own API (pinned version)."""
    from mutmut.__main__ import SourceFileMutationData, status_by_exit_code, walk_mutatable_files
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            yield name, status, get_diff_for_mutant(name, path=path) if status == "survived" else None, path


_LOG_CALLS: dict[str, tuple[dict[str, int], list[tuple[int, int]]]] = {}


def _log_calls(path) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """{function name: first line} and the line spans of the logging calls (``log.*(...)``,
    ``logging.*(...)``, ``print(...)``, ``(log.warning if ... else log.info)(...)``) of a source file."""
    key = str(path)
    if key not in _LOG_CALLS:
        tree = ast.parse(open(path, encoding="utf-8").read())
        starts = {
            node.name: node.lineno
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        spans = [
            (node.lineno, node.end_lineno)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and re.match(r"\(?(log|logging|logger)\.|print$", ast.unparse(node.func))
        ]
        _LOG_CALLS[key] = (starts, spans)
    return _LOG_CALLS[key]


def logging_only(name: str, diff: str, path) -> bool:
    """True when every line the mutant changes lies inside a logging call: it changes what is
    logged (or logs nothing), not a number, a file or a decision."""
    function = re.sub(r"__mutmut_\d+$", "", name.rsplit(".", 1)[-1]).split("\u01c1")[-1].removeprefix("x_")
    starts, spans = _log_calls(path)
    if function not in starts:
        return False
    changed, line = [], 0
    for text in diff.splitlines():
        hunk = re.match(r"@@ -(\d+)", text)
        if hunk:
            line = int(hunk.group(1))
        elif text.startswith("-") and not text.startswith("---"):
            changed.append(starts[function] + line - 1)
            line += 1
        elif text.startswith(" "):
            line += 1
    return bool(changed) and all(any(a <= c <= b for a, b in spans) for c in changed)


def _tokens(code: str) -> list[tuple[int, str]]:
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [(-1, code)]
    return [
        (t.type, "<str>" if t.type == tokenize.STRING else t.string)
        for t in toks
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)
    ]


def message_only(diff: str) -> bool:
    """True when the mutant changes only string literals."""
    old = "\n".join(
        line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")
    )
    new = "\n".join(
        line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")
    )
    return bool(old) and _tokens(old) == _tokens(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status, diff, path in mutant_results():
        module = re.sub(r"\.x[_\u01c1].*$", "", name)
        if status == "survived":
            quiet = message_only(diff) or logging_only(name, diff, path)
            kind = "survived (message only)" if quiet else "survived"
            counts[module][kind] += 1
            if kind == "survived":
                survivors.append((name, diff))
        else:
            counts[module][status] += 1
    total = Counter()
    print(
        f"{'module':24} {'checked':>8} {'killed':>7} {'survived':>9} {'msg-only':>9} {'no test':>8} "
        f"{'score':>7} {'score*':>7}"
    )
    for module, c in sorted(counts.items()):
        total.update(c)
        _row(module, c)
    _row("all", total)
    print(
        "killed includes timeouts; 'no test': mutants in code no selected test runs (counted as not killed);\n"
        "score: killed / checked mutants; score*: the same without the survivors that change only a message text\n"
        "or a logging call"
    )
    if args.list:
        for name, diff in survivors:
            print(f"\n# {name}\n{diff}")


def _row(module: str, c: Counter) -> None:
    checked = sum(v for k, v in c.items() if k != "not checked")
    msg = c["survived (message only)"]
    killed = c["killed"] + c["timeout"]
    print(
        f"{module:24} {checked:8d} {killed:7d} {c['survived']:9d} {msg:9d} {c['no tests']:8d} "
        f"{killed / max(checked, 1):7.1%} {killed / max(checked - msg, 1):7.1%}"
    )


if __name__ == "__main__":
    main()
