"""Summarise a mutmut run: killed and surviving mutants per module, and the mutation score.

Run by bench/mutation.sh in the scratch copy where `mutmut run` ran. A surviving mutant whose
diff changes nothing but string literals (an error or log message) is counted apart: it does
not change a number or a decision. The score is printed both ways.

    python bench/mutation_report.py [--list]     # --list: print each surviving mutant's diff
"""

from __future__ import annotations

import argparse
import io
import re
import tokenize
from collections import Counter, defaultdict


def mutant_results():
    """(name, status, diff or None) of every mutant, through mutmut's own API (pinned version)."""
    from mutmut.__main__ import SourceFileMutationData, status_by_exit_code, walk_mutatable_files
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            yield name, status, get_diff_for_mutant(name, path=path) if status == "survived" else None


def _tokens(code: str) -> list[tuple[int, str]]:
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [(-1, code)]
    return [(t.type, "<str>" if t.type == tokenize.STRING else t.string) for t in toks
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)]


def message_only(diff: str) -> bool:
    """True when the mutant changes only string literals."""
    old = "\n".join(l[1:].strip() for l in diff.splitlines() if l.startswith("-") and not l.startswith("---"))
    new = "\n".join(l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++"))
    return bool(old) and _tokens(old) == _tokens(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status, diff in mutant_results():
        module = re.sub(r"\.x[_\u01c1].*$", "", name)
        if status == "survived":
            kind = "survived (message only)" if message_only(diff) else "survived"
            counts[module][kind] += 1
            if kind == "survived":
                survivors.append((name, diff))
        else:
            counts[module][status] += 1
    total = Counter()
    print(f"{'module':24} {'checked':>8} {'killed':>7} {'survived':>9} {'msg-only':>9} {'no test':>8} "
          f"{'score':>7} {'score*':>7}")
    for module, c in sorted(counts.items()):
        total.update(c)
        _row(module, c)
    _row("all", total)
    print("killed includes timeouts; 'no test': mutants in code no selected test runs (counted as not killed);\n"
          "score: killed / checked mutants; score*: the same without the survivors that change only a message text")
    if args.list:
        for name, diff in survivors:
            print(f"\n# {name}\n{diff}")


def _row(module: str, c: Counter) -> None:
    checked = sum(v for k, v in c.items() if k != "not checked")
    msg = c["survived (message only)"]
    killed = c["killed"] + c["timeout"]
    print(f"{module:24} {checked:8d} {killed:7d} {c['survived']:9d} {msg:9d} {c['no tests']:8d} "
          f"{killed / max(checked, 1):7.1%} {killed / max(checked - msg, 1):7.1%}")


if __name__ == "__main__":
    main()
