"""`edgenode infer`: inputs through the cluster, answers printed or saved (argv is parsed in
edgenode.cli).

Every input that can be answered is: one that cannot be read, does not fit the model or
whose request fails is reported on stderr (and as an "error" entry with --json) while the
others go on, and the exit status is then 1. Only what can be checked without reading the
inputs stops the command before anything is sent: a missing file, an unsupported file type,
an empty folder, an output file that cannot be written or a file given twice with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenode._cli_cluster import client_security, find_nodes
from edgenode._cli_common import EXIT_FAILURE, EXIT_OK
from edgenode._cli_progress import progress_for
from edgenode._stats import percentile
from edgenode.errors import EdgenodeError, InputError, UsageError

__all__ = ["cmd_infer"]


@dataclass(frozen=True, slots=True)
class _Answer:
    outputs: dict[str, Any]
    seconds: float  # the request, from sending to the answer


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str  # one line that names the file


def cmd_infer(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    return run(_infer(args))


async def _infer(args: argparse.Namespace) -> int:
    import asyncio

    from edgenode.client import collect_files, load_inputs
    from edgenode.client.cluster import ClusterClient
    from edgenode.client.outputs import check_writable, output_keys
    from edgenode.model.preprocess import preprocess_of

    files = collect_files([Path(p) for p in args.inputs])
    save_to = Path(args.save_outputs) if args.save_outputs else None
    if save_to is not None:
        keys = output_keys(files)  # a file given twice: refused before anything is sent
        check_writable(save_to)
    client = ClusterClient(security=client_security(args))
    outcomes: list[_Answer | _Failure] = []
    try:
        entry = await client.connect(await find_nodes(args, client))
        address = client.entry_address
        if not entry.plan.agreed_digest:
            raise EdgenodeError(f"the cluster at {address} has not agreed on a plan yet")
        manifest = await client.manifest()
        family = preprocess_of(manifest.model.name, manifest.model.preprocess)
        sending = asyncio.Semaphore(args.concurrency)
        # Inputs are decoded a little ahead of the requests, not all at once: a folder of
        # thousands of images would otherwise sit in memory decoded.
        loading = asyncio.Semaphore(2 * args.concurrency)
        progress = progress_for(len(files), mode=args.progress, quiet=args.quiet)

        async def one(path: Path) -> _Answer | _Failure:
            outcome: _Answer | _Failure
            async with loading:
                try:
                    inputs = await asyncio.to_thread(
                        load_inputs, path, manifest.model.inputs, preprocess=family
                    )
                    async with sending:
                        t0 = time.perf_counter()
                        outputs = await client.infer(inputs, timeout_s=args.timeout)
                        outcome = _Answer(outputs, time.perf_counter() - t0)
                except InputError as exc:
                    outcome = _Failure(str(exc))  # its message starts with the file
                except UsageError:
                    raise  # about the command, not this input
                except EdgenodeError as exc:
                    outcome = _Failure(f"{path}: {exc}")
            progress.step(failed=isinstance(outcome, _Failure))
            return outcome

        started = time.perf_counter()
        try:
            outcomes = list(await asyncio.gather(*(one(f) for f in files)))
        finally:
            progress.close()
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()

    answered = [o for o in outcomes if isinstance(o, _Answer)]
    failures = [o.message for o in outcomes if isinstance(o, _Failure)]
    latencies = [a.seconds for a in answered]
    summary: dict[str, Any] = {
        "images": len(answered),
        "failed": len(failures),
        "seconds": elapsed,
        "per_second": len(answered) / elapsed if elapsed else 0.0,
        "p50_s": percentile(latencies, 0.5) if latencies else None,
        "p95_s": percentile(latencies, 0.95) if latencies else None,
        "node": address,
        "model": manifest.model.name,
    }
    report = [_entry(path, outcome, args) for path, outcome in zip(files, outcomes, strict=True)]
    if args.json:
        print(json.dumps({"results": report, "summary": summary}, indent=2))
    else:
        _print_text(report, summary, len(files))
    sys.stdout.flush()
    for message in failures:
        sys.stderr.write(f"edgenode: error: {message}\n")
    if save_to is not None:
        from edgenode.client.outputs import save_outputs

        arrays = {
            f"{key}{name}": value
            for key, outcome in zip(keys, outcomes, strict=True)
            if isinstance(outcome, _Answer)
            for name, value in outcome.outputs.items()
        }
        save_outputs(save_to, arrays)
    return EXIT_FAILURE if failures else EXIT_OK


def _entry(path: Path, outcome: _Answer | _Failure, args: argparse.Namespace) -> dict[str, Any]:
    """One input's part of the report: its outputs (top classes for a classifier), or its
    error."""
    from edgenode.client import is_class_vector, summarize
    from edgenode.client import top_k as top_classes

    if isinstance(outcome, _Failure):
        return {"file": str(path), "error": outcome.message}
    entry: dict[str, Any] = {"file": str(path), "seconds": outcome.seconds, "outputs": {}}
    for name, value in outcome.outputs.items():
        if is_class_vector(value):
            entry["outputs"][name] = [
                {"class": i, "label": label, "probability": p}
                for i, label, p in top_classes(value, args.top)
            ]
        else:
            entry["outputs"][name] = value.tolist() if args.json else summarize(name, value)
    return entry


def _print_text(report: list[dict[str, Any]], summary: dict[str, Any], total: int) -> None:
    from edgenode.client import label_text

    for entry in report:
        if "error" in entry:
            continue  # on stderr
        print(f"{entry['file']}  ({entry['seconds'] * 1e3:.1f} ms)")
        for name, value in entry["outputs"].items():
            if isinstance(value, list):
                if len(entry["outputs"]) > 1:  # the summaries name their output themselves
                    print(f"  {name}:")
                for rank, c in enumerate(value, 1):
                    label = label_text(c["label"])
                    print(f"  {rank}. {label:<28} {c['probability']:.4f}  (class {c['class']})")
            else:
                print(f"  {value}")
    if total > 1:
        print(f"\n{_summary_line(summary, total)}")


def _summary_line(summary: dict[str, Any], total: int) -> str:
    answered, failed = summary["images"], summary["failed"]
    if not answered:
        return f"none of the {total} inputs answered (errors on stderr)"
    head = f"{total} inputs" if not failed else f"{answered} of {total} inputs answered"
    line = (
        f"{head} in {summary['seconds']:.2f} s: {summary['per_second']:.1f}/s, "
        f"p50 {summary['p50_s'] * 1e3:.1f} ms, p95 {summary['p95_s'] * 1e3:.1f} ms"
    )
    return f"{line}; {failed} failed (errors on stderr)" if failed else line
