"""The generated code in edgenode/_proto matches what scripts/gen_protos.py makes now."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_protos.py"


def load_script():
    """scripts/gen_protos.py as a module, failing clearly if the generator is not the pinned one."""
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.check_generator()
    except SystemExit as exc:
        pytest.fail(str(exc))
    return module


def _in_subprocess(code: str) -> subprocess.CompletedProcess[str]:
    """Run protoc in a fresh process: in-process it can crash beside TensorFlow's own
    protobuf (seen: a segmentation fault when the whole suite had imported TensorFlow)."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('g', {str(SCRIPT)!r})\n"
        "gen = importlib.util.module_from_spec(spec); spec.loader.exec_module(gen)\n"
        f"{code}"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_generated_code_is_up_to_date() -> None:
    out = _in_subprocess("print(gen.stale_files())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", (
        f"stale generated code {out.stdout}: run scripts/gen_protos.py"
    )


def test_staleness_is_detected(tmp_path: Path) -> None:
    copy = tmp_path / "_proto"
    code = (
        "from pathlib import Path\n"
        f"copy = Path({str(copy)!r}); gen.generate(copy)\n"
        "assert gen.stale_files(copy) == []\n"
        "stub = copy / 'edgenode' / 'v1' / 'edgenode_pb2.py'\n"
        "stub.write_bytes(stub.read_bytes() + b'\\n')\n"
        "print(gen.stale_files(copy))"
    )
    out = _in_subprocess(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['edgenode/v1/edgenode_pb2.py']"


def test_generated_module_imports_from_the_installed_package() -> None:
    from edgenode._proto.edgenode.v1 import edgenode_pb2

    assert edgenode_pb2.DESCRIPTOR.name == "edgenode/v1/edgenode.proto"
    assert edgenode_pb2.DESCRIPTOR.package == "edgenode.v1"
    assert set(edgenode_pb2.DESCRIPTOR.services_by_name["EdgeNode"].methods_by_name) == {
        "Stream",
        "Infer",
        "InferSession",
        "Hello",
        "Leave",
        "GetPlan",
        "GetStatus",
        "FetchFile",
        "Probe",
    }


def test_generator_is_pinned() -> None:
    assert load_script().check_generator().startswith("1.85.")
