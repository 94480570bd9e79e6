"""Fuzzing the gRPC surface of live nodes: random and mutated frames never break a node.

Two real `edgenode run` processes serve the multi_io model split in four parts. Hypothesis
builds random frames, frames of real tensors with parsed fields altered (dtype, shape, byte
length, offset, checksum, name, request id, plan digest, data, parts) and bytes mutated
(flipped, inserted, deleted, truncated, frames duplicated, dropped, swapped), and sends every
case to one node on Stream and on Infer; tensors stamped with the agreed plan reach the
node's router and run its stages. The same bytes are decoded locally with the codec, which
predicts the exact answer: Stream's status code (and its summary when accepted), and Infer's
status code or outputs, which must equal the whole model run locally (within 1e-5). Well-formed
control requests with random fields get their normal answers. Meanwhile a normal client keeps
sending real requests, whose answers must stay correct; at the end both nodes are alive, still
agree on the same plan, answer a final batch, and logged no traceback. The cases are
derandomized: every run sends the same ones.

Status codes: the codec's rejections map to INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
ALREADY_EXISTS and DATA_LOSS, bad inputs to INVALID_ARGUMENT; nothing here may time out or
end UNAVAILABLE (the node is not shutting down, so that would mean it hung or broke), and
UNKNOWN (an unhandled exception) is never right, and neither is INTERNAL here: it is the
node's answer for "a stage failed running its part", and every input that passes the origin's
checks (an empty batch does not) runs.

The two tests at the end reproduce node bugs the fuzzing found (now fixed).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import EdgenodeError
from edgenode.transport import ControlClient, loop_factory
from edgenode.transport._status import status_of
from edgenode.transport.codec import (
    CHUNK_BYTES,
    MAX_NDIM,
    FrameDecoder,
    RequestId,
    Tensor,
    encode_frames,
    wire_dtypes,
)
from edgenode.verify import ReferenceSet
from tests.nodes import (
    NodeProcess,
    agreed_cluster,
    node_config,
    running_cluster,
    statuses,
    wait_until,
)
from tests.reference import KERAS_TOLERANCE, assert_answer, reference_set

pytestmark = [pytest.mark.tf, pytest.mark.slow]

SERVICE = "/edgenode.v1.EdgeNode"
NAMES = ("fa", "fb")
LIMIT_BYTES = 1 << 20  # the nodes' [limits] max_tensor_bytes: small, so exceeding it is cheap
STREAM_TIMEOUT_S = 5.0
INFER_TIMEOUT_S = 15.0  # above the nodes' request deadline (10 s): their own timeout shows
CONTROL_TIMEOUT_S = 5.0
NORMAL_TIMEOUT_S = 30.0
MAX_EXAMPLES = 150
STALE_DIGEST = "0" * 64  # looks like a plan digest; never the agreed one
ORIGINS = ("fa", "fb", "fz", "")  # request id prefixes: the nodes themselves, a stranger, none
OTHER_NAMES = ("unknown", "!retry", "!fail", "", "image.o1", "ü")
DTYPES = tuple(str(d) for d in wire_dtypes())
Code: TypeAlias = grpc.StatusCode
Fill: TypeAlias = Literal["uniform", "zeros", "nan", "inf", "huge"]
Plan: TypeAlias = Literal["real", "stale", ""]  # the agreed digest, another one, none
_T = TypeVar("_T")
_TOKENS = itertools.count()  # request ids never repeat within a test session


# -- the cluster ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    nodes: list[NodeProcess]
    digest: str  # the agreed plan
    identity: str  # the manifest identity (FetchFile's model_sha256)
    directory: Path  # the split model: manifest and part files
    graph: Any
    manifest: Any
    model_inputs: tuple[Any, ...]  # TensorSpecs of the model inputs
    specs: dict[str, tuple[int | None, ...]]  # every boundary tensor's shape by name
    owners: dict[int, str]  # part index -> node id, under the agreed plan
    # inputs, and the whole model's answers for them (a set per batch size) and which it is
    normal: list[tuple[dict[str, np.ndarray], ReferenceSet, int]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("fuzz-split")
    model = models.build("multi_io")
    graph = build_graph(model)
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    specs: dict[str, tuple[int | None, ...]] = {}
    for part in manifest.parts:
        for t in (*part.inputs, *part.outputs):
            specs[t.name] = t.shape
    by_size = []
    for size in (1, 2):  # a ReferenceSet holds answers of one shape
        batches = [models.sample_inputs(model, seed=100 + s, batch=size) for s in range(3)]
        refs = reference_set(graph, batches, tolerance=KERAS_TOLERANCE, manifest=manifest)
        by_size.append([(inputs, refs, i) for i, inputs in enumerate(batches)])
    normal = [case for pair in zip(*by_size, strict=True) for case in pair]  # batch 1, 2, 1...

    work = tmp_path_factory.mktemp("fuzz-nodes")
    # slow pinned speeds: the plan uses both nodes
    config = node_config(work, extra=f"[limits]\nmax_tensor_bytes = {LIMIT_BYTES}\n")
    with running_cluster(directory, work, NAMES, config=config) as (nodes, found):
        plan = found[NAMES[0]]["plan"]
        owners = {
            part: a["node_id"] for a in plan["assignments"] for part in range(a["start"], a["stop"])
        }
        assert len(set(owners.values())) == 2, "the plan should use both nodes"
        yield Cluster(
            nodes=nodes,
            digest=plan["agreed_digest"],
            identity=manifest.identity,
            directory=directory,
            graph=graph,
            manifest=manifest,
            model_inputs=tuple(manifest.model.inputs),
            specs=specs,
            owners=owners,
            normal=normal,
        )


class Harness:
    """A test's event loop, with a normal client on it, and raw calls to the nodes.

    The raw calls use grpc's blocking API on a worker thread while the loop runs the normal
    client: grpc.aio reports a write that fails because the server already ended the call as
    INTERNAL "Internal error from Core", hiding the server's status (grpc/grpc#36066); the
    blocking API reports the server's status.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._runner = asyncio.Runner(loop_factory=loop_factory())
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-call")
        self._channels = [grpc.insecure_channel(n.address) for n in cluster.nodes]
        self._client: ControlClient | None = None
        self._normal: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.answers = 0  # correct answers the normal client got
        self.errors: list[str] = []  # what went wrong for it
        self.outcomes: Counter[str] = Counter()  # status codes seen, by RPC

    def run(self, coro: Any) -> Any:
        return self._runner.run(coro)

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the worker thread while the loop (and the normal client) runs."""

        async def in_pool() -> _T:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

        result: _T = self.run(in_pool())
        return result

    def token(self) -> str:
        """A per-case request id fragment; distinct ones differ in most characters, so a
        mutation can never turn one case's request id into another's."""
        return hashlib.sha256(str(next(_TOKENS)).encode()).hexdigest()[:12]

    async def _open(self) -> None:
        self._client = ControlClient(protocol=1)

    async def _close(self) -> None:
        await self.stop_normal_client()
        if self._client is not None:
            await self._client.aclose()

    def __enter__(self) -> Harness:
        self.run(self._open())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._close())
        finally:
            self._runner.close()
            self._pool.shutdown(wait=True)
            for channel in self._channels:
                channel.close()

    # -- raw calls (blocking) --------------------------------------------------------------

    def stream(self, target: int, frames: list[bytes]) -> tuple[Code, str, bytes]:
        method = self._channels[target].stream_unary(f"{SERVICE}/Stream")
        try:
            reply: bytes = method(iter(frames), timeout=STREAM_TIMEOUT_S)
        except grpc.RpcError as exc:
            return _status(exc)
        return Code.OK, "", reply

    def infer(self, target: int, frames: list[bytes]) -> tuple[Code, str, list[bytes]]:
        return self._bidi(target, "Infer", frames)

    def session(self, target: int, frames: list[bytes]) -> tuple[Code, str, list[bytes]]:
        return self._bidi(target, "InferSession", frames)

    def _bidi(self, target: int, name: str, frames: list[bytes]) -> tuple[Code, str, list[bytes]]:
        method = self._channels[target].stream_stream(f"{SERVICE}/{name}")
        replies: list[bytes] = []
        try:
            for frame in method(iter(frames), timeout=INFER_TIMEOUT_S):
                replies.append(frame)
        except grpc.RpcError as exc:
            code, details, _ = _status(exc)
            return code, details, replies
        return Code.OK, "", replies

    def unary(self, target: int, method: str, request: bytes) -> tuple[Code, str, bytes]:
        call = self._channels[target].unary_unary(f"{SERVICE}/{method}")
        try:
            reply: bytes = call(request, timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return _status(exc)
        return Code.OK, "", reply

    def fetch(self, target: int, request: bytes) -> tuple[Code, str, bytes]:
        call = self._channels[target].unary_stream(f"{SERVICE}/FetchFile")
        chunks = []
        try:
            for reply in call(request, timeout=CONTROL_TIMEOUT_S):
                chunks.append(pb.FileChunk.FromString(reply).data)
        except grpc.RpcError as exc:
            return _status(exc)
        return Code.OK, "", b"".join(chunks)

    # -- the normal client ---------------------------------------------------------------

    async def start_normal_client(self) -> None:
        self._stop = asyncio.Event()
        self._normal = asyncio.create_task(self._normal_loop(self._stop))

    async def stop_normal_client(self) -> None:
        if self._stop is not None and self._normal is not None:
            self._stop.set()
            await self._normal
        self._normal = self._stop = None

    async def _normal_loop(self, stop: asyncio.Event) -> None:
        """Real requests, one at a time, alternating between the nodes."""
        assert self._client is not None
        for i in itertools.count():
            if stop.is_set():
                return
            inputs, refs, index = self.cluster.normal[i % len(self.cluster.normal)]
            node = self.cluster.nodes[i % len(self.cluster.nodes)]
            try:
                got = await self._client.infer(node.address, inputs, timeout_s=NORMAL_TIMEOUT_S)
                assert_answer(refs, index, got)
            except Exception as exc:  # noqa: BLE001  every failure is reported, not only the first
                self.errors.append(f"normal request {i} at {node.name}: {exc!r}")
            else:
                self.answers += 1

    async def many_normal(self, count: int) -> list[str]:
        """``count`` concurrent correct requests over both nodes; the failures."""
        assert self._client is not None
        client = self._client

        async def one(i: int) -> str | None:
            inputs, refs, index = self.cluster.normal[i % len(self.cluster.normal)]
            node = self.cluster.nodes[i % len(self.cluster.nodes)]
            try:
                got = await client.infer(node.address, inputs, timeout_s=NORMAL_TIMEOUT_S)
                assert_answer(refs, index, got)
            except Exception as exc:  # noqa: BLE001  every failure is reported, as above
                return f"final request {i} at {node.name}: {exc!r}"
            return None

        results = await asyncio.gather(*(one(i) for i in range(count)))
        return [r for r in results if r is not None]


def _status(exc: grpc.RpcError) -> tuple[Code, str, bytes]:
    call: Any = exc  # the blocking API's errors are also grpc.Call objects
    return call.code(), call.details() or "", b""


@pytest.fixture
def harness(cluster: Cluster) -> Iterator[Harness]:
    with Harness(cluster) as h:
        yield h


def check_outputs(
    got: dict[str, Any], want: dict[str, np.ndarray], *, atol: float, rtol: float
) -> None:
    """A fuzzed request's answer against the whole model's for its (drawn) inputs.

    One reference, not a ReferenceSet: Hypothesis draws the inputs (zeros, repeats, huge
    values), so they need not differ, and these checks are about the protocol; the
    normal client's answers are the ones checked against inputs that must differ."""
    assert set(got) == set(want), f"outputs {sorted(got)}, expected {sorted(want)}"
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)


# -- case descriptions (what Hypothesis draws) -----------------------------------------------


@dataclass(frozen=True)
class TensorItem:
    """A well-formed tensor, encoded by the codec before any mutation."""

    origin: str  # request id prefix (the part before the first dot)
    request: int  # tensors of a case with the same index share a request id
    name: str
    dtype: str
    shape: tuple[int, ...]
    fill: Fill
    seed: int
    plan: Plan


@dataclass(frozen=True)
class Group:
    """Tensors encoded together: small ones share frames, large ones span several."""

    tensors: tuple[TensorItem, ...]
    chunk_bytes: int
    checksum: bool


@dataclass(frozen=True)
class Raw:
    """Random bytes: a whole frame, one part of a frame, or the header of one part."""

    data: bytes
    wrap: Literal["frame", "part", "header"]


PartField = Literal[
    "dtype",
    "shape",
    "byte_length",
    "byte_length_delta",
    "crc32",
    "name",
    "origin",
    "plan",
    "offset",
    "data",
    "drop_header",
    "duplicate_part",
    "unknown_field",
]


@dataclass(frozen=True)
class PartEdit:
    """Parse one frame with the generated classes, alter one field of one part, re-encode."""

    frame: int
    part: int
    field: PartField
    value: Any


@dataclass(frozen=True)
class ByteMutation:
    kind: Literal["flip", "insert", "delete", "truncate", "duplicate", "drop", "swap", "empty"]
    frame: int
    position: int
    value: int


@dataclass(frozen=True)
class FrameCase:
    items: tuple[Group | Raw, ...]
    edits: tuple[PartEdit, ...]
    mutations: tuple[ByteMutation, ...]
    target: int  # which node


@dataclass(frozen=True)
class ControlCase:
    method: Literal["Hello", "GetPlan", "GetStatus", "FetchFile"]
    protocol: int
    model: Literal["real", "other", ""]
    part: int
    unknown: bytes  # well-formed unknown fields appended to the request
    target: int


# -- strategies ------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, wire: int, payload: int | bytes) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return key + _varint(payload)
    assert isinstance(payload, bytes)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload  # fixed64 / fixed32: payload has the right size


def unknown_fields(first: int) -> st.SearchStrategy[bytes]:
    """Well-formed protobuf fields with numbers from ``first`` (unknown to the receiver)."""
    number = st.integers(first, 40)
    one = st.one_of(
        st.builds(_field, number, st.just(0), st.integers(0, (1 << 64) - 1)),
        st.builds(_field, number, st.just(1), st.binary(min_size=8, max_size=8)),
        st.builds(_field, number, st.just(2), st.binary(max_size=40)),
        st.builds(_field, number, st.just(5), st.binary(min_size=4, max_size=4)),
    )
    return st.lists(one, max_size=3).map(b"".join)


def _small_shapes() -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(0, 6), max_size=4).map(tuple)


@st.composite
def tensor_items(draw: st.DrawFn, specs: dict[str, tuple[int | None, ...]]) -> TensorItem:
    real = sorted(specs)
    kind = draw(st.sampled_from(["right", "right", "wrong_shape", "wrong_dtype", "any", "limit"]))
    name = draw(st.sampled_from(real if kind != "any" else real + list(OTHER_NAMES)))
    right = (draw(st.integers(0, 3)), *(d or 1 for d in specs.get(name, (None,))[1:]))
    dtype, shape = "float32", right
    if kind == "wrong_shape":
        shape = draw(_small_shapes().filter(lambda s: s != right))
    elif kind == "wrong_dtype":
        dtype = draw(st.sampled_from([d for d in DTYPES if d != "float32"]))
    elif kind == "any":
        dtype, shape = draw(st.sampled_from(DTYPES)), draw(_small_shapes())
    elif kind == "limit":  # just below, at and just above the node's limit
        shape = (LIMIT_BYTES // 4 + draw(st.integers(-1, 1)),)
    return TensorItem(
        origin=draw(st.sampled_from(ORIGINS)),
        request=draw(st.integers(0, 2)),
        name=name,
        dtype=dtype,
        shape=shape,
        fill=draw(st.sampled_from(["uniform", "uniform", "zeros", "nan", "inf", "huge"])),
        seed=draw(st.integers(0, 3)),
        plan=draw(st.sampled_from(["real", "real", "stale", ""])),
    )


def _chunking() -> st.SearchStrategy[tuple[int, bool]]:
    return st.tuples(st.sampled_from([16, 200, 4096, CHUNK_BYTES]), st.booleans())


@st.composite
def request_groups(draw: st.DrawFn, cluster: Cluster, extra: int = 0) -> Group:
    """The inputs of one real request (sometimes an empty batch), maybe with extra tensors."""
    batch = draw(st.sampled_from([1, 1, 1, 2, 3, 0]))
    origin = draw(st.sampled_from(ORIGINS))
    plan: Plan = draw(st.sampled_from(["real", "stale"]))
    fill: Fill = draw(st.sampled_from(["uniform", "uniform", "uniform", "zeros", "nan", "huge"]))
    seed = draw(st.integers(0, 3))
    tensors = [
        TensorItem(origin, 0, s.name, s.dtype, (batch, *s.shape[1:]), fill, seed, plan)
        for s in cluster.model_inputs
    ]
    tensors += draw(st.lists(tensor_items(cluster.specs), max_size=extra))
    chunk_bytes, checksum = draw(_chunking())
    return Group(tuple(draw(st.permutations(tensors))), chunk_bytes, checksum)


@st.composite
def tensor_groups(draw: st.DrawFn, cluster: Cluster) -> Group:
    tensors = tuple(draw(st.lists(tensor_items(cluster.specs), min_size=1, max_size=4)))
    chunk_bytes, checksum = draw(_chunking())
    return Group(tensors, chunk_bytes, checksum)


def raws() -> st.SearchStrategy[Raw]:
    return st.builds(
        Raw,
        st.one_of(st.binary(max_size=120), unknown_fields(1)),
        st.sampled_from(["frame", "part", "header"]),
    )


_INT64 = st.one_of(
    st.integers(-2, 9),
    st.sampled_from([2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63), -(2**31)]),
)
_UINT64 = st.one_of(
    st.integers(0, 4096),
    st.sampled_from([LIMIT_BYTES, LIMIT_BYTES + 1, 2**32, 2**63, 2**64 - 1]),
)
_EDIT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "dtype": st.one_of(st.integers(-1, 16), st.sampled_from([99, 2**31 - 1, -(2**31)])),
    "shape": st.one_of(st.lists(_INT64, max_size=5).map(tuple), st.just((1,) * (MAX_NDIM + 1))),
    "byte_length": _UINT64,
    "byte_length_delta": st.integers(-8, 8),
    "crc32": st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    "name": st.sampled_from(["image", "meta", "pool", "meta_fc", "late_head", *OTHER_NAMES]),
    "origin": st.sampled_from(ORIGINS),
    "plan": st.sampled_from(["real", "stale", "", "x" * 300]),
    "offset": _UINT64,
    "data": st.integers(0, 1024),
    "drop_header": st.none(),
    "duplicate_part": st.none(),
    "unknown_field": unknown_fields(4),
}


def edits() -> st.SearchStrategy[PartEdit]:
    return st.sampled_from(sorted(_EDIT_VALUES)).flatmap(
        lambda f: st.builds(
            PartEdit, st.integers(0, 7), st.integers(0, 3), st.just(f), _EDIT_VALUES[f]
        )
    )


def mutations() -> st.SearchStrategy[ByteMutation]:
    return st.builds(
        ByteMutation,
        st.sampled_from(
            ["flip", "flip", "insert", "delete", "truncate", "duplicate", "drop", "swap", "empty"]
        ),
        st.integers(0, 7),
        st.integers(0, 1 << 20),
        st.integers(0, 255),
    )


def cases(cluster: Cluster) -> st.SearchStrategy[FrameCase | ControlCase]:
    targets = st.integers(0, len(NAMES) - 1)
    request = request_groups(cluster).map(lambda g: (g,))
    clean = st.builds(FrameCase, request, st.just(()), st.just(()), targets)
    mutated = st.builds(
        FrameCase,
        request,
        st.lists(edits(), max_size=2).map(tuple),
        st.lists(mutations(), max_size=2).map(tuple),
        targets,
    )
    item = st.one_of(request_groups(cluster, extra=1), tensor_groups(cluster), raws())
    mixed = st.builds(
        FrameCase,
        st.lists(item, min_size=1, max_size=3).map(tuple),
        st.lists(edits(), max_size=3).map(tuple),
        st.lists(mutations(), max_size=3).map(tuple),
        targets,
    )
    return st.one_of(clean, mutated, mixed, mixed, control_cases())


def control_cases() -> st.SearchStrategy[ControlCase]:
    return st.builds(
        ControlCase,
        st.sampled_from(["Hello", "GetPlan", "GetStatus", "FetchFile"]),
        st.integers(0, 2**32 - 1),
        st.sampled_from(["real", "other", ""]),
        st.one_of(st.integers(-2, 5), st.sampled_from([2**31 - 1, -(2**31)])),
        unknown_fields(3),
        st.integers(0, len(NAMES) - 1),
    )


def _inputs(batch: int = 1, plan: Plan = "real") -> tuple[TensorItem, ...]:
    """multi_io's two inputs for one request from node fb (the origin in its request id)."""
    return (
        TensorItem("fb", 0, "image", "float32", (batch, 8, 8, 3), "uniform", 0, plan),
        TensorItem("fb", 0, "meta", "float32", (batch, 5), "uniform", 0, plan),
    )


def _one(name: str, dtype: str, shape: tuple[int, ...], chunk: int = CHUNK_BYTES) -> Group:
    return Group((TensorItem("fa", 0, name, dtype, shape, "uniform", 1, "real"),), chunk, False)


def _case(
    *items: Group | Raw,
    edits: Sequence[PartEdit] = (),
    mutations: Sequence[ByteMutation] = (),
    target: int = 0,
) -> FrameCase:
    return FrameCase(tuple(items), tuple(edits), tuple(mutations), target)


REQUEST = Group(_inputs(), CHUNK_BYTES, False)
CHUNKED = Group(_inputs(batch=2), 200, True)  # the image spans 8 frames, with a checksum
# Tried first, whatever Hypothesis draws: every run covers each kind of damage.
EXPLICIT_CASES: tuple[FrameCase | ControlCase, ...] = (
    _case(REQUEST),
    _case(CHUNKED, target=1),
    _case(Group(_inputs(plan="stale"), CHUNK_BYTES, False), target=1),  # wrong plan digest
    _case(),  # no frame at all
    _case(Raw(b"\xff" * 12, "frame")),
    _case(Raw(b"\x0a\x02\xff\xfe", "header")),  # a header whose request id is not UTF-8
    _case(_one("image", "float32", (LIMIT_BYTES // 4 + 1,), LIMIT_BYTES // 4)),  # over limit
    _case(_one("unknown", "float32", (LIMIT_BYTES // 4,), LIMIT_BYTES // 4)),  # at the limit
    _case(REQUEST, edits=[PartEdit(0, 0, "shape", (2**40,)), PartEdit(0, 0, "byte_length", 2**42)]),
    _case(REQUEST, edits=[PartEdit(0, 0, "byte_length", 2**64 - 1)]),
    _case(REQUEST, edits=[PartEdit(0, 1, "byte_length_delta", -4)]),
    _case(REQUEST, edits=[PartEdit(0, 0, "dtype", 99)]),
    _case(REQUEST, edits=[PartEdit(0, 0, "dtype", -1)]),
    _case(REQUEST, edits=[PartEdit(0, 1, "shape", (-1, 5))]),
    _case(REQUEST, edits=[PartEdit(0, 0, "shape", (2**63 - 1, 2**63 - 1))]),
    _case(REQUEST, edits=[PartEdit(0, 0, "shape", (1,) * (MAX_NDIM + 1))]),
    _case(REQUEST, edits=[PartEdit(0, 0, "crc32", 0)]),  # checksum mismatch
    _case(CHUNKED, edits=[PartEdit(1, 0, "offset", 2**64 - 1)]),  # chunk beyond the end
    _case(CHUNKED, edits=[PartEdit(1, 0, "data", 0)]),  # a chunk lost its bytes
    _case(CHUNKED, edits=[PartEdit(0, 0, "duplicate_part", None)]),
    _case(CHUNKED, edits=[PartEdit(0, 0, "drop_header", None)]),  # a chunk without header
    _case(REQUEST, edits=[PartEdit(0, 0, "unknown_field", _field(9, 2, b"later"))]),
    _case(REQUEST, edits=[PartEdit(0, 1, "name", "image")]),  # the same tensor twice
    _case(REQUEST, mutations=[ByteMutation("duplicate", 0, 0, 0)]),  # the frame twice
    _case(_one("image", "float32", (1, 8, 8, 3), 512), mutations=[ByteMutation("drop", 1, 0, 0)]),
    _case(CHUNKED, mutations=[ByteMutation("swap", 1, 2, 0)]),  # chunks out of order
    _case(REQUEST, mutations=[ByteMutation("truncate", 0, 100, 0)]),
    _case(REQUEST, mutations=[ByteMutation("flip", 0, 3, 0x40)]),
    _case(_one("unknown", "float32", (2,)), _one("!fail", "uint8", (3,))),  # unknown names
    _case(_one("image", "float32", (1, 8, 8, 4)), target=1),  # a real name, wrong shape
    _case(_one("image", "float64", (1, 8, 8, 3)), target=1),  # a real name, wrong dtype
    _case(Group(_inputs(batch=0), CHUNK_BYTES, False)),  # an empty batch: refused up front
    ControlCase("FetchFile", 0, "real", -1, b"", 0),
    ControlCase("FetchFile", 0, "real", 3, b"", 1),
    ControlCase("FetchFile", 0, "real", 4, b"", 0),
    ControlCase("FetchFile", 0, "other", 0, b"", 1),
    ControlCase("Hello", 7, "", 0, _field(20, 2, b"?"), 0),
    ControlCase("GetPlan", 2**32 - 1, "other", 0, b"", 1),
    ControlCase("GetStatus", 0, "", 0, _field(15, 0, 1), 0),
)


# -- building the bytes of a case --------------------------------------------------------------


def make_array(item: TensorItem) -> np.ndarray:
    rng = np.random.default_rng(item.seed)
    dtype = np.dtype(item.dtype)
    if dtype.kind in "fc":
        value = rng.uniform(-1, 1, item.shape)
        if item.fill == "zeros":
            value[...] = 0
        elif item.fill == "huge":
            value *= 1e30 if dtype.itemsize > 2 else 6e4
        elif item.fill in ("nan", "inf") and value.size:
            value.flat[0] = np.nan if item.fill == "nan" else np.inf
        return value.astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, item.shape).astype(dtype)
    return rng.integers(0, 100, item.shape).astype(dtype)


def _digest(plan: str, cluster: Cluster) -> str:
    return {"real": cluster.digest, "stale": STALE_DIGEST}.get(plan, plan)


def _request_id(origin: str, token: str, request: int) -> RequestId:
    rest = f"fz-{token}-{request}"
    return RequestId(f"{origin}.{rest}" if origin else rest)


def _encode_group(group: Group, token: str, cluster: Cluster) -> list[bytes]:
    tensors = [
        Tensor(
            _request_id(t.origin, token, t.request),
            t.name,
            make_array(t),
            _digest(t.plan, cluster),
        )
        for t in group.tensors
    ]
    largest = max(t.nbytes for t in tensors)
    # Chunks small enough to exercise reassembly, never so small that a call takes ages.
    chunk = max(group.chunk_bytes, largest // 32)
    return list(encode_frames(tensors, chunk_bytes=chunk, checksum=group.checksum))


def _encode_raw(raw: Raw) -> bytes:
    if raw.wrap == "frame":
        return raw.data
    if raw.wrap == "part":
        return _field(1, 2, raw.data)
    return _field(1, 2, _field(1, 2, raw.data))


def _apply_edit(frames: list[bytes], edit: PartEdit, cluster: Cluster) -> None:
    if not frames:
        return
    index = edit.frame % len(frames)
    try:
        frame = pb.Frame.FromString(frames[index])
    except DecodeError:
        return  # a random frame: nothing to parse
    if not frame.parts:
        return
    part = frame.parts[edit.part % len(frame.parts)]
    header, value = part.header, edit.value
    extra = b""
    if edit.field == "dtype":
        header.dtype = value
    elif edit.field == "shape":
        del header.shape[:]
        header.shape.extend(value)
    elif edit.field == "byte_length":
        header.byte_length = value
    elif edit.field == "byte_length_delta":
        header.byte_length = max(0, header.byte_length + value)
    elif edit.field == "crc32":
        if value is None:
            header.ClearField("crc32")
        else:
            header.crc32 = value
    elif edit.field == "name":
        header.name = value
    elif edit.field == "origin":  # keep the case's unique part of the request id
        rest = header.request_id.split(".", 1)[-1]
        header.request_id = f"{value}.{rest}" if value else rest
    elif edit.field == "plan":
        header.plan_digest = _digest(value, cluster)
    elif edit.field == "offset":
        part.offset = value
    elif edit.field == "data":
        part.data = part.data[:value] + bytes(max(0, value - len(part.data)))
    elif edit.field == "drop_header":
        part.ClearField("header")
    elif edit.field == "duplicate_part":
        frame.parts.add().CopyFrom(part)
    elif edit.field == "unknown_field":
        extra = value  # unknown fields of the frame: the receiver must skip them
    frames[index] = frame.SerializeToString() + extra


def _apply_mutation(frames: list[bytes], m: ByteMutation) -> None:
    if m.kind == "empty":
        frames.insert(m.frame % (len(frames) + 1), b"")
        return
    if not frames:
        return
    index = m.frame % len(frames)
    data = bytearray(frames[index])
    if m.kind == "duplicate":
        frames.insert(index, bytes(data))
        return
    if m.kind == "drop":
        del frames[index]
        return
    if m.kind == "swap":
        other = m.position % len(frames)
        frames[index], frames[other] = frames[other], frames[index]
        return
    if m.kind == "flip" and data:
        data[m.position % len(data)] ^= m.value % 255 + 1
    elif m.kind == "insert":
        data.insert(m.position % (len(data) + 1), m.value)
    elif m.kind == "delete" and data:
        del data[m.position % len(data)]
    elif m.kind == "truncate":
        del data[m.position % (len(data) + 1) :]
    frames[index] = bytes(data)


def build_frames(case: FrameCase, token: str, cluster: Cluster) -> list[bytes]:
    frames: list[bytes] = []
    for item in case.items:
        if isinstance(item, Group):
            frames += _encode_group(item, token, cluster)
        else:
            frames.append(_encode_raw(item))
    for edit in case.edits:
        _apply_edit(frames, edit, cluster)
    for mutation in case.mutations:
        _apply_mutation(frames, mutation)
    return frames


# -- what the node must answer (decoded here with the same codec) --------------------------------


@dataclass
class Decoded:
    error: EdgenodeError | None
    tensors: list[Tensor] = field(default_factory=list)
    count: int = 0
    nbytes: int = 0


def decode(frames: Sequence[bytes], limit: int) -> Decoded:
    decoder = FrameDecoder(max_tensor_bytes=limit)
    tensors: list[Tensor] = []
    try:
        for frame in frames:
            tensors += decoder.feed(frame)
        decoder.finish()
    except EdgenodeError as exc:
        decoder.discard()
        return Decoded(exc, tensors)
    return Decoded(None, tensors, decoder.tensors, decoder.bytes)


@dataclass(frozen=True)
class InferExpectation:
    codes: frozenset[Code]
    outputs: dict[str, np.ndarray] | None = None  # when the answer must be OK
    values: bool = True  # False: only names, shapes and dtypes are predictable
    why: str = ""


def expected_infer(decoded: Decoded, cluster: Cluster) -> InferExpectation:
    from edgenode.backends import check_inputs
    from edgenode.model.slicing import run_model
    from edgenode.transport._session import infer_status as _infer_status

    names = {t.name for t in cluster.model_inputs}
    stranger = next((t.name for t in decoded.tensors if t.name not in names), None)
    if stranger is not None:  # refused as it arrives, before any later bad frame
        return InferExpectation(frozenset({Code.INVALID_ARGUMENT}), why=f"{stranger!r}")
    if decoded.error is not None:
        return InferExpectation(frozenset({_infer_status(decoded.error)}), why=str(decoded.error))
    inputs = {t.name: t.array for t in decoded.tensors}  # as the node does: the last one wins
    try:
        check_inputs(cluster.model_inputs, inputs)
    except EdgenodeError as exc:
        return InferExpectation(frozenset({_infer_status(exc)}), why=str(exc))
    # NaN, inf and huge inputs (nan/huge fills, flipped data bytes) are outside what the two
    # runs agree on: the nodes' parts run under tf.function, whose fused conv+relu turns NaN
    # into 0 (as keras' predict() does), while the local model runs eagerly and keeps NaN.
    moderate = all(
        bool(np.all(np.isfinite(v))) and float(np.max(np.abs(v), initial=0)) < 1e6
        for v in inputs.values()
    )
    want = cluster.manifest.model.name_outputs(run_model(cluster.graph, inputs))
    return InferExpectation(frozenset({Code.OK}), outputs=want, values=moderate)


@dataclass(frozen=True)
class SessionExpectation:
    code: Code  # of the call
    answers: dict[str, InferExpectation] = field(default_factory=dict)  # by request id


def expected_session(decoded: Decoded, cluster: Cluster) -> SessionExpectation:
    """InferSession's answer, as its node side works: a tensor's request id groups it; a
    name that is not a model input refuses its request at once; ``!end`` runs the request
    on what came before it; later tensors of a started or refused request are ignored;
    requests without ``!end`` when the call ends are refused."""
    from edgenode.transport._session import END

    if decoded.error is not None:
        return SessionExpectation(status_of(decoded.error)[0])
    names = {t.name for t in cluster.model_inputs}
    waiting: dict[str, dict[str, np.ndarray]] = {}
    closed: set[str] = set()
    answers: dict[str, InferExpectation] = {}
    refused = InferExpectation(frozenset({Code.INVALID_ARGUMENT}))
    for t in decoded.tensors:
        rid = str(t.request_id)
        if rid in closed:
            continue
        values = waiting.setdefault(rid, {})
        if t.name == END:
            del waiting[rid]
            closed.add(rid)
            group = [Tensor(t.request_id, k, v) for k, v in values.items()]
            answers[rid] = expected_infer(Decoded(None, group), cluster)
        elif t.name not in names:
            del waiting[rid]
            closed.add(rid)
            answers[rid] = refused
        else:
            values[t.name] = t.array
    answers.update(dict.fromkeys(waiting, refused))
    return SessionExpectation(Code.OK, answers)


def check_session(h: Harness, case: FrameCase, frames: list[bytes], decoded: Decoded) -> None:
    from edgenode.transport._session import END, ERROR

    # Each request id the frames carry (as far as they decode) gets its !end after them.
    ids = list(dict.fromkeys(t.request_id for t in decoded.tensors))
    frames = frames + list(encode_frames([Tensor(i, END, np.zeros(0, np.uint8)) for i in ids]))
    decoded = decode(frames, LIMIT_BYTES)
    want = expected_session(decoded, h.cluster)
    code, details, replies = h.call(h.session, case.target, frames)
    node = h.cluster.nodes[case.target].name
    h.outcomes[f"InferSession {code.name}"] += 1
    assert code == want.code, (
        f"InferSession at {node}: {code.name} {details!r}, expected {want.code.name}"
    )
    if code != Code.OK:
        return
    reply = decode(replies, 1 << 40)
    assert reply.error is None, f"InferSession reply from {node} does not decode: {reply.error}"
    got: dict[str, dict[str, np.ndarray]] = {}
    for t in reply.tensors:
        got.setdefault(str(t.request_id), {})[t.name] = t.array
    assert set(got) == set(want.answers), f"answered {sorted(got)}, expected {sorted(want.answers)}"
    for rid, expect in want.answers.items():
        answer = got[rid]
        if ERROR in answer:
            text = bytes(answer[ERROR]).decode("utf-8", "replace")
            h.outcomes[f"InferSession answer {text.split(':', 1)[0]}"] += 1
            assert set(answer) == {ERROR}, f"{rid}: an error and more: {sorted(answer)}"
            assert any(text.startswith(f"{c.name}: ") for c in expect.codes), (
                f"InferSession request {rid} at {node}: {text!r}, expected "
                f"{sorted(c.name for c in expect.codes)} ({expect.why})"
            )
            continue
        h.outcomes["InferSession answer OK"] += 1
        assert Code.OK in expect.codes and expect.outputs is not None, (
            f"InferSession request {rid} at {node} answered, expected "
            f"{sorted(c.name for c in expect.codes)} ({expect.why})"
        )
        assert END in answer, f"{rid}: outputs without {END}"
        outputs = {k: v for k, v in answer.items() if k != END}
        if expect.values:
            check_outputs(outputs, expect.outputs, atol=1e-5, rtol=0.0)
        else:
            assert {k: (v.shape, v.dtype) for k, v in outputs.items()} == {
                k: (v.shape, v.dtype) for k, v in expect.outputs.items()
            }


def check_frame_case(h: Harness, case: FrameCase) -> None:
    cluster = h.cluster
    frames = build_frames(case, h.token(), cluster)
    decoded = decode(frames, LIMIT_BYTES)
    want_stream = Code.OK if decoded.error is None else status_of(decoded.error)[0]
    want_infer = expected_infer(decoded, cluster)

    s_code, s_details, s_reply = h.call(h.stream, case.target, frames)
    i_code, i_details, i_replies = h.call(h.infer, case.target, frames)
    node = cluster.nodes[case.target].name
    h.outcomes[f"Stream {s_code.name}"] += 1
    h.outcomes[f"Infer {i_code.name}"] += 1
    assert s_code == want_stream, (
        f"Stream at {node}: {s_code.name} {s_details!r}, expected {want_stream.name} "
        f"({decoded.error})"
    )
    if s_code == Code.OK:
        summary = pb.StreamSummary.FromString(s_reply)
        assert (summary.tensors, summary.bytes) == (decoded.count, decoded.nbytes)
    assert i_code in want_infer.codes, (
        f"Infer at {node}: {i_code.name} {i_details!r}, expected "
        f"{sorted(c.name for c in want_infer.codes)} ({want_infer.why})"
    )
    if i_code == Code.INTERNAL:
        assert "parts [" in i_details, f"INTERNAL that is not a stage failure: {i_details!r}"
    if want_infer.outputs is not None:
        reply = decode(i_replies, 1 << 40)
        assert reply.error is None, f"Infer reply from {node} does not decode: {reply.error}"
        got = {t.name: t.array for t in reply.tensors}
        if want_infer.values:
            check_outputs(got, want_infer.outputs, atol=1e-5, rtol=0.0)
        else:
            assert {k: (v.shape, v.dtype) for k, v in got.items()} == {
                k: (v.shape, v.dtype) for k, v in want_infer.outputs.items()
            }
    check_session(h, case, frames, decoded)


def check_control_case(h: Harness, case: ControlCase) -> None:
    cluster = h.cluster
    h.outcomes[f"control {case.method}"] += 1
    node = cluster.nodes[case.target].name
    if case.method == "FetchFile":
        model = {"real": cluster.identity, "other": "f" * 64}.get(case.model, "")
        request = pb.FileRequest(model_sha256=model, part=case.part).SerializeToString()
        code, details, data = h.call(h.fetch, case.target, request + case.unknown)
        files = {-1: "manifest.json"} | {p.index: p.file for p in cluster.manifest.parts}
        if case.model == "real" and case.part in files:
            assert code == Code.OK, f"FetchFile at {node}: {code.name} {details!r}"
            assert data == (cluster.directory / files[case.part]).read_bytes()
        else:
            assert code == Code.NOT_FOUND, f"FetchFile at {node}: {code.name} {details!r}"
        return
    request = {
        "Hello": pb.HelloRequest(protocol=case.protocol),
        "GetPlan": pb.PlanRequest(),
        "GetStatus": pb.StatusRequest(),
    }[case.method].SerializeToString()
    code, details, reply = h.call(h.unary, case.target, case.method, request + case.unknown)
    assert code == Code.OK, f"{case.method} at {node}: {code.name} {details!r}"
    if case.method == "Hello":
        assert pb.NodeRecord.FromString(reply).node_id == node
    elif case.method == "GetPlan":
        assert pb.PlanReply.FromString(reply).agreed_digest == cluster.digest
    else:
        assert pb.NodeStatus.FromString(reply).node.node_id == node


def _log_sizes(cluster: Cluster) -> list[int]:
    return [len(n.log()) for n in cluster.nodes]


def _new_log(cluster: Cluster, sizes: list[int]) -> dict[str, str]:
    return {n.name: n.log()[size:] for n, size in zip(cluster.nodes, sizes, strict=True)}


# -- the tests ---------------------------------------------------------------------------------


def test_fuzzed_frames_never_break_a_live_node(harness: Harness) -> None:
    cluster = harness.cluster
    logs = _log_sizes(cluster)
    harness.run(harness.start_normal_client())

    def fuzz(case: FrameCase | ControlCase) -> None:
        if isinstance(case, FrameCase):
            check_frame_case(harness, case)
        else:
            check_control_case(harness, case)
        for node in cluster.nodes:
            assert node.process.poll() is None, f"node {node.name} died:\n{node.log()[-3000:]}"
        assert not harness.errors, "the normal client failed beside the fuzzing:\n" + "\n".join(
            harness.errors
        )

    test = given(case=cases(cluster))(fuzz)
    for case in EXPLICIT_CASES:
        test = example(case=case)(test)
    test = settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )(test)
    try:
        test()
    finally:
        harness.run(harness.stop_normal_client())
    assert not harness.errors, "\n".join(harness.errors)
    assert harness.answers >= 20, f"the normal client got only {harness.answers} answers"
    outcomes = harness.outcomes
    print(f"fuzz outcomes: {dict(sorted(outcomes.items()))}; normal answers: {harness.answers}")
    expected = (
        {
            f"{rpc} {code}"
            for rpc in ("Stream", "Infer")
            for code in (
                "OK",
                "INVALID_ARGUMENT",
                "RESOURCE_EXHAUSTED",
                "ALREADY_EXISTS",
                "DATA_LOSS",
            )
        }
        | {"control Hello", "control GetPlan", "control GetStatus", "control FetchFile"}
        | {
            f"InferSession {code}"
            for code in ("OK", "INVALID_ARGUMENT", "ALREADY_EXISTS", "DATA_LOSS")
        }
        | {"InferSession answer OK", "InferSession answer INVALID_ARGUMENT"}
    )
    assert expected <= set(outcomes), f"not covered: {sorted(expected - set(outcomes))}"
    assert outcomes["Infer OK"] >= 10, outcomes

    for node in cluster.nodes:
        assert node.process.poll() is None, f"node {node.name} died:\n{node.log()[-3000:]}"
    found = agreed_cluster(cluster.nodes, set(NAMES))
    assert {status["plan"]["agreed_digest"] for status in found.values()} == {cluster.digest}
    failures = harness.run(harness.many_normal(16))
    assert not failures, "\n".join(failures)
    for name, text in _new_log(cluster, logs).items():
        assert "Traceback" not in text, f"node {name} logged a traceback:\n{text[-5000:]}"


def test_control_rpcs_refuse_undecodable_requests_cleanly(harness: Harness) -> None:
    cluster = harness.cluster
    logs = _log_sizes(cluster)

    @settings(max_examples=30, deadline=None, derandomize=True, database=None)
    @given(
        method=st.sampled_from(["Hello", "Leave", "GetPlan", "GetStatus", "FetchFile"]),
        request=st.binary(max_size=64)
        | st.builds(  # well-formed goodbyes of members, of strangers, of invalid ids
            lambda node, inc: pb.LeaveRequest(node_id=node, incarnation=inc).SerializeToString(),
            st.sampled_from([*NAMES, "stranger", "Not An Id", ""]),
            st.integers(0, 2**64 - 1),
        ),
        target=st.integers(0, len(NAMES) - 1),
    )
    def fuzz(method: str, request: bytes, target: int) -> None:
        if method == "FetchFile":
            code, details, _ = harness.fetch(target, request)
        else:
            code, details, _ = harness.unary(target, method, request)
        assert code not in (Code.UNKNOWN, Code.INTERNAL), f"{method} {request!r}: {details!r}"

    try:
        fuzz()
    finally:
        for node in cluster.nodes:
            assert node.process.poll() is None, f"node {node.name} died"
    for name, text in _new_log(cluster, logs).items():
        assert "Traceback" not in text, f"node {name} logged a traceback:\n{text[-3000:]}"
    # No goodbye in another run's name evicted anyone (Leave names the caller's own run).
    found = agreed_cluster(cluster.nodes, set(NAMES))
    assert {status["plan"]["agreed_digest"] for status in found.values()} == {cluster.digest}


def _stage_count(address: str, node: str, part: int) -> int:
    found = statuses([address]).get(node)
    if found is None:
        return -1
    return sum(int(s.get("count", 0)) for s in found["stages"] if int(s["part"]) == part)


def test_resent_stage_inputs_do_not_break_the_stream_between_nodes(harness: Harness) -> None:
    cluster = harness.cluster
    index = {n.name: i for i, n in enumerate(cluster.nodes)}
    last_part = max(cluster.owners)
    head, meta_owner, tail = cluster.owners[0], cluster.owners[1], cluster.owners[last_part]
    assert head != tail
    tail_address = cluster.nodes[index[tail]].address
    logs = _log_sizes(cluster)
    inputs = cluster.normal[0][0]
    token = harness.token()

    def send(node: str, rid: str, name: str) -> Code:
        tensor = Tensor(RequestId(rid), name, inputs[name], cluster.digest)
        return harness.stream(index[node], list(encode_frames([tensor])))[0]

    # The first stage's input of a request whose origin (the tail) has no attempt for it,
    # sent twice on two calls: a receiver only catches duplicates within one stream.
    for _ in range(2):
        assert send(head, f"{tail}.dup-{token}", "image") == Code.OK
    # Then a complete request whose last stage the tail runs: proof that the head's stream
    # to the tail carried what was sent after the re-sent input. Its origin is a stranger:
    # a node ignores requests of its own origin that it has no attempt for.
    before = _stage_count(tail_address, tail, last_part)
    assert send(meta_owner, f"fz.probe-{token}", "meta") == Code.OK
    assert send(head, f"fz.probe-{token}", "image") == Code.OK
    wait_until(
        lambda: _stage_count(tail_address, tail, last_part) > before,
        15.0,
        "the tail to run the probe request",
    )
    text = _new_log(cluster, logs)
    assert "rejected stream" not in text[tail], text[tail]
    assert "stream to" not in text[head], text[head]
