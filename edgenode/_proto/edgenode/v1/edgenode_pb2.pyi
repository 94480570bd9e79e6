# mypy: disable-error-code="type-arg"
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_COMPLEX64: _ClassVar[DType]
    DTYPE_COMPLEX128: _ClassVar[DType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_NONE: _ClassVar[Encoding]
    ENCODING_FLOAT16: _ClassVar[Encoding]
    ENCODING_INT8_AFFINE: _ClassVar[Encoding]
DTYPE_UNSPECIFIED: DType
DTYPE_BOOL: DType
DTYPE_INT8: DType
DTYPE_UINT8: DType
DTYPE_INT16: DType
DTYPE_UINT16: DType
DTYPE_INT32: DType
DTYPE_UINT32: DType
DTYPE_INT64: DType
DTYPE_UINT64: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_COMPLEX64: DType
DTYPE_COMPLEX128: DType
ENCODING_NONE: Encoding
ENCODING_FLOAT16: Encoding
ENCODING_INT8_AFFINE: Encoding

class HelloRequest(_message.Message):
    __slots__ = ("protocol",)
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    def __init__(self, protocol: _Optional[int] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("node_id", "name", "addresses", "port", "protocol", "cluster", "model_sha256", "speed", "memory_bytes", "incarnation", "started_ms", "link_bytes_per_s", "baseline_bytes", "backend")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    LINK_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    BASELINE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    port: int
    protocol: int
    cluster: str
    model_sha256: str
    speed: float
    memory_bytes: int
    incarnation: int
    started_ms: int
    link_bytes_per_s: float
    baseline_bytes: int
    backend: str
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., port: _Optional[int] = ..., protocol: _Optional[int] = ..., cluster: _Optional[str] = ..., model_sha256: _Optional[str] = ..., speed: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., incarnation: _Optional[int] = ..., started_ms: _Optional[int] = ..., link_bytes_per_s: _Optional[float] = ..., baseline_bytes: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class ProbeChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("bytes", "bytes_per_s")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    bytes_per_s: float
    def __init__(self, bytes: _Optional[int] = ..., bytes_per_s: _Optional[float] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("node_id", "incarnation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: int
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("node_id", "start", "stop", "replica")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    start: int
    stop: int
    replica: int
    def __init__(self, node_id: _Optional[str] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., replica: _Optional[int] = ...) -> None: ...

class PlanReply(_message.Message):
    __slots__ = ("computed_digest", "agreed_digest", "assignments", "members", "idle", "bottleneck_s", "latency_s", "problem")
    COMPUTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AGREED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    computed_digest: str
    agreed_digest: str
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    members: _containers.RepeatedScalarFieldContainer[str]
    idle: _containers.RepeatedScalarFieldContainer[str]
    bottleneck_s: float
    latency_s: float
    problem: str
    def __init__(self, computed_digest: _Optional[str] = ..., agreed_digest: _Optional[str] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., members: _Optional[_Iterable[str]] = ..., idle: _Optional[_Iterable[str]] = ..., bottleneck_s: _Optional[float] = ..., latency_s: _Optional[float] = ..., problem: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageStats(_message.Message):
    __slots__ = ("part", "count", "mean_s", "p50_s", "p90_s")
    PART_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_S_FIELD_NUMBER: _ClassVar[int]
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    part: int
    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    def __init__(self, part: _Optional[int] = ..., count: _Optional[int] = ..., mean_s: _Optional[float] = ..., p50_s: _Optional[float] = ..., p90_s: _Optional[float] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "address", "plan", "parts", "requests_served", "stages", "peers", "uptime_s", "owned", "state", "part_runs", "requests_failed", "metrics_url", "roles", "resident_bytes", "peak_bytes", "predicted_bytes")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PART_RUNS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    METRICS_URL_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    node: NodeRecord
    address: str
    plan: PlanReply
    parts: _containers.RepeatedScalarFieldContainer[int]
    requests_served: int
    stages: _containers.RepeatedCompositeFieldContainer[StageStats]
    peers: _containers.RepeatedCompositeFieldContainer[NodeRecord]
    uptime_s: float
    owned: _containers.RepeatedScalarFieldContainer[int]
    state: str
    part_runs: int
    requests_failed: int
    metrics_url: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    resident_bytes: int
    peak_bytes: int
    predicted_bytes: int
    def __init__(self, node: _Optional[_Union[NodeRecord, _Mapping]] = ..., address: _Optional[str] = ..., plan: _Optional[_Union[PlanReply, _Mapping]] = ..., parts: _Optional[_Iterable[int]] = ..., requests_served: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageStats, _Mapping]]] = ..., peers: _Optional[_Iterable[_Union[NodeRecord, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., owned: _Optional[_Iterable[int]] = ..., state: _Optional[str] = ..., part_runs: _Optional[int] = ..., requests_failed: _Optional[int] = ..., metrics_url: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., resident_bytes: _Optional[int] = ..., peak_bytes: _Optional[int] = ..., predicted_bytes: _Optional[int] = ...) -> None: ...

class FileRequest(_message.Message):
    __slots__ = ("model_sha256", "part")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    part: int
    def __init__(self, model_sha256: _Optional[str] = ..., part: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TensorHeader(_message.Message):
    __slots__ = ("request_id", "plan_digest", "name", "dtype", "shape", "byte_length", "crc32", "encoding", "scale", "zero_point")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_digest: str
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    byte_length: int
    crc32: int
    encoding: Encoding
    scale: float
    zero_point: int
    def __init__(self, request_id: _Optional[str] = ..., plan_digest: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., byte_length: _Optional[int] = ..., crc32: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ...) -> None: ...

class TensorPart(_message.Message):
    __slots__ = ("header", "offset", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: TensorHeader
    offset: int
    data: bytes
    def __init__(self, header: _Optional[_Union[TensorHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[TensorPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[TensorPart, _Mapping]]] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("tensors", "bytes")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tensors: int
    bytes: int
    def __init__(self, tensors: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
