"""How the smoke test judges its outputs, so that the same checks pass on every CPU.

A step's output is one of three kinds, and ``expected_results/smoke/summary.json`` holds, per output,
what is checked:

- **exact**: a plain JSON value that no floating point decides (counts, indices, shapes, hashes of
  data-only poisons, parameter counts of fixed architectures, which files exist): must be equal.
- **near**: ``{"value": v, "tol": t}``, a float computed from the data alone, without learning (the
  mean of an augmented batch): within ``t`` of the expected value. Only the last bits may move.
- **within**: ``{"value": v, "min": lo, "max": hi}``, a result of training or search. A search
  amplifies the last bit of floating point, so its outcome depends on the CPU's kernels and thread
  count; these are checked against a range that any correct run satisfies (an accuracy floor, a valid
  genotype's skip count, a finite, positive condition number). The expected file holds only the range,
  which the step declares, so blessing never records a machine's learned value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

EXACT, NEAR, WITHIN = "exact", "near", "within"


def near(value: float, tol: float) -> dict[str, float]:
    """A data-only float, expected within ``tol``."""
    return {"value": value, "tol": tol}


def within(value: float | None, low: float | None, high: float | None) -> dict[str, Any]:
    """A learned or searched number, expected in ``[low, high]``; a None bound is open, and a None value
    (not finite, see ``finite``) is in no range."""
    return {"value": value, "min": low, "max": high}


def finite(value: float) -> float | None:
    """``value`` for a JSON summary: None when it is NaN or infinite (JSON has no such numbers)."""
    return value if math.isfinite(value) else None


def kind(entry: Any) -> str:
    """Which of the three checks an output or expectation entry is."""
    if isinstance(entry, dict) and "tol" in entry:
        return NEAR
    if isinstance(entry, dict) and "min" in entry:
        return WITHIN
    return EXACT


def expectation(output: Any) -> Any:
    """What ``--bless`` records for one output: a range keeps only its bounds, never the value."""
    if kind(output) == WITHIN:
        return {"min": output["min"], "max": output["max"]}
    return output


def value(output: Any) -> Any:
    """The measured value of an output, whatever its kind."""
    return output.get("value") if kind(output) != EXACT else output


def satisfies(output: Any, expected: Any) -> bool:
    """Whether one output meets its expectation (a value of the wrong kind never does)."""
    got = value(output)
    if kind(expected) == NEAR:
        return isinstance(got, (int, float)) and abs(got - expected["value"]) <= expected["tol"]
    if kind(expected) == WITHIN:
        low, high = expected["min"], expected["max"]
        number = isinstance(got, (int, float)) and not isinstance(got, bool)
        return number and (low is None or low <= got) and (high is None or got <= high)
    return kind(output) == EXACT and output == expected


def describe(expected: Any) -> str:
    if kind(expected) == NEAR:
        return f"{expected['value']!r} ± {expected['tol']!r}"
    if kind(expected) == WITHIN:
        low, high = expected["min"], expected["max"]
        if low is None or high is None:
            return "a finite number" if low == high else f"≥ {low}" if high is None else f"≤ {high}"
        return f"in [{low!r}, {high!r}]"
    return repr(expected)


def compare(ours: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Every mismatch as one line; an empty list means the run met every expectation."""
    problems = []
    for key in sorted(set(ours) | set(expected)):
        if key not in expected:
            problems.append(f"{key}: produced {value(ours[key])!r} but not in the expected results")
        elif key not in ours:
            problems.append(f"{key}: expected {describe(expected[key])} but not produced")
        elif not satisfies(ours[key], expected[key]):
            problems.append(f"{key}: expected {describe(expected[key])}, got {value(ours[key])!r}")
    return problems


def differences(runs: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The outputs whose values differ between runs of the same smoke test under different settings.

    One row per differing key: its kind (from the expectation, so a learned output that happened to
    come out equal is not reported), each run's value (None where a run did not produce it) and
    whether every run still met the expectation. Exact outputs that differ are the portability bugs.
    """
    rows = []
    for key in sorted({k for outputs in runs.values() for k in outputs}):
        values = {name: value(outputs[key]) if key in outputs else None for name, outputs in runs.items()}
        if len({repr(v) for v in values.values()}) == 1:
            continue
        want = expected.get(key)
        rows.append(
            {
                "key": key,
                "kind": kind(want) if key in expected else "unexpected",
                "values": values,
                "all_pass": key in expected
                and all(key in outputs and satisfies(outputs[key], want) for outputs in runs.values()),
            }
        )
    return rows


def render_differences(rows: list[dict[str, Any]], verdicts: Mapping[str, str], total: int) -> str:
    """The portability report: each setting's verdict, then the outputs that differ, one row each."""
    from tabulate import tabulate

    lines = [f"{name:<18} {verdict}" for name, verdict in verdicts.items()]
    if not rows:
        return "\n".join([*lines, f"All {total} outputs are identical in every setting."])
    exact = sum(r["kind"] == EXACT for r in rows)
    lines.append(
        f"{len(rows)} of {total} outputs differ between settings ({exact} of them exact, which must not); "
        "each row says whether every setting still met its expectation:"
    )
    body = []
    for r in rows:
        passed = "yes" if r["all_pass"] else "NO"
        body.append([r["key"], r["kind"], *(_short(r["values"].get(n)) for n in verdicts), passed])
    lines.append(tabulate(body, headers=["output", "check", *verdicts, "all pass"], disable_numparse=True))
    return "\n".join(lines)


def _short(item: Any, width: int = 16) -> str:
    text = "–" if item is None else str(item)
    return text if len(text) <= width else text[: width - 1] + "…"
