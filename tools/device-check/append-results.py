"""Turn a device check's files (tools/device-check/run.sh's $OUT: env.json, steps.tsv, pytest.xml,
bench.json, bench.md) into one dated markdown section naming the machine, and append it to
docs/benchmarks.md.

  python tools/device-check/append-results.py FILES_AT            # append to docs/benchmarks.md
  python tools/device-check/append-results.py FILES_AT --report R # append to R
  python tools/device-check/append-results.py --section-only OUT  # print the section (run.sh)

The report is rewritten atomically (a temporary file, then a rename), earlier sections kept; the
same run is never appended twice (a marker comment with the run's time and machine). The bench's
own JSON rows are also added to the report's .json twin (docs/benchmarks.json), tagged with the
machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load(folder: Path) -> dict[str, Any]:
    env_path = folder / "env.json"
    if not env_path.is_file():
        raise SystemExit(f"append-results: folder: no env.json in {folder} (not a device check?)")
    env = json.loads(env_path.read_text())
    steps = []
    if (folder / "steps.tsv").is_file():
        for line in (folder / "steps.tsv").read_text().splitlines():
            name, status, secs, detail = ([*line.split("\t"), "", "", ""])[:4]
            steps.append({"name": name, "status": status, "s": secs, "detail": detail})
    bench = (
        json.loads((folder / "bench.json").read_text()) if (folder / "bench.json").is_file() else []
    )
    return {"env": env, "steps": steps, "bench": bench, "folder": folder}


def machine(env: dict[str, Any]) -> str:
    if env.get("device_name"):
        return str(env["device_name"])
    return f"CPU {env.get('machine', '')} (dry run)" if env.get("dry_run") else "CPU"


def marker(env: dict[str, Any]) -> str:
    return f"<!-- device-check {env['time']} {machine(env)} -->"


def _pytest_line(folder: Path) -> str:
    path = folder / "pytest.xml"
    if not path.is_file():
        return "GPU tests: no pytest.xml (the step did not run or was stopped)."
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if suite is None:
        return "GPU tests: pytest.xml has no testsuite."
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    bad = [
        f"`{case.get('classname')}.{case.get('name')}`"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    line = (
        f"GPU tests (`pytest -m gpu`): {passed} passed, {n['failures']} failed, {n['errors']} "
        f"errors, {n['skipped']} skipped in {float(suite.get('time', 0)):.1f} s."
    )
    return line + (" Failed: " + ", ".join(bad) + "." if bad else "")


def _bench_tables(rows: list[dict[str, Any]], folder: Path) -> str:
    """The bench's own tables (blendedit.bench.table), from its JSON rows; its markdown if the
    rows no longer fit the dataclass."""
    if not rows:
        return "No bench run finished.\n"
    try:
        sys.path.insert(0, str(ROOT / "src"))
        from blendedit.bench import BenchResult, realtime_line, stages_table, table

        names = {f.name for f in fields(BenchResult)}
        results = [BenchResult(**{k: v for k, v in r.items() if k in names}) for r in rows]
        commands = "\n".join(f"- `{r['command']}`" for r in rows)
        return (
            table(results)
            + "".join(f"\n{realtime_line(r)}.\n" for r in results if r.realtime)  # few-step rows
            + "\nStages of the best end-to-end run:\n\n"
            + stages_table(results)
            + "\nCommands:\n\n"
            + commands
            + "\n"
        )
    except Exception as e:  # an older/newer bench: its own markdown, headings one level down
        text = (folder / "bench.md").read_text() if (folder / "bench.md").is_file() else ""
        runs = text.split("\n## ")[1:]  # the bench's own dated sections, without its header
        note = f"(the bench's own markdown: its rows did not load, {type(e).__name__}: {e})\n"
        return note + "".join("\n### " + r for r in runs)


def section(folder: Path, commit: str | None = None) -> str:
    d = _load(folder)
    env = d["env"]
    pk = env.get("packages", {})

    def ver(name: str) -> str:
        return f"{name} {pk.get(name, {}).get('version')}"

    carried = [ver(n) for n, i in pk.items() if i.get("carried")]
    image = [ver(n) for n, i in pk.items() if not i.get("carried") and i.get("version")]
    lines = [
        f"\n## {env['time']}: device check on {machine(env)} (tools/device-check)\n",
        marker(env),
        "",
        f"Machine: {env.get('gpu') or 'no GPU'}; Python {env.get('python')}, "
        f"CUDA {env.get('torch_cuda') or 'none'}." + (f" Commit {commit}." if commit else ""),
        f"Carried wheels: {', '.join(carried) or 'none'}. From the image: {', '.join(image)}.",
    ]
    if env.get("bf16_matmul_tflops"):
        lines.append(
            f"A bf16 8192x8192x8192 matrix product on random data ran at "
            f"{env['bf16_matmul_tflops']:.0f} TFLOP/s (median of 20); the table's 'of peak' "
            "divides by the data sheet's dense peak."
        )
    lines += [
        "",
        f"Steps of `tools/device-check/run.sh` (budget {env.get('budget_s')} s):",
        "",
        "| step | status | wall (s) | detail |",
        "|---|---|---|---|",
        *(f"| {s['name']} | {s['status']} | {s['s']} | `{s['detail']}` |" for s in d["steps"]),
        "",
        _pytest_line(folder),
        "",
        _bench_tables(d["bench"], folder),
    ]
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" with uncommitted changes" if dirty else "")


def append(folder: Path, report: Path) -> str:
    d = _load(folder)
    env = d["env"]
    old = report.read_text() if report.is_file() else "# Benchmarks\n"
    if marker(env) in old:
        raise SystemExit(f"append-results: report: {report} already has the run of {env['time']}")
    text = section(folder, _commit())
    tmp = report.with_name(report.name + ".partial")
    tmp.write_text(old.rstrip("\n") + "\n" + text)
    tmp.replace(report)
    json_path = report.with_suffix(".json")
    if d["bench"] and json_path.is_file():  # the bench's JSON twin of the report
        data = json.loads(json_path.read_text())
        data.extend({**r, "machine": machine(env), "source": "device-check"} for r in d["bench"])
        tmp = json_path.with_name(json_path.name + ".partial")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(json_path)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the device check's files ($OUT, or files_at)")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--section-only", action="store_true", help="print the section, append nothing")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"append-results: folder: {args.folder} is not a folder", file=sys.stderr)
        return 2
    if args.section_only:
        print(section(args.folder))
        return 0
    append(args.folder, args.report)
    print(f"append-results: appended the run in {args.folder} to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
