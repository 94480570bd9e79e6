"""The ways of moving tensors compared (setups, tuning variants) and how much to measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KIB = 1 << 10
MIB = 1 << 20
SIZES_BYTES = [100 * KIB, 400 * KIB, 1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB]
HOP_BYTES = 400 * KIB
IDLE_S = 0.010
CHILD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Setup:
    """One way of moving tensors between the two processes."""

    label: str
    kind: str  # "grpc" or "raw"
    uvloop: bool
    env: dict[str, str] = field(default_factory=dict)
    channel_options: tuple[tuple[str, int], ...] = ()
    chunk_bytes: int = MIB
    malloc: str = "tuned"  # tuned | none | mmap (tuned thresholds, mmap still allowed)

    def child_args(self) -> list[str]:
        args = ["--kind", self.kind, "--chunk-bytes", str(self.chunk_bytes)]
        args += ["--malloc", self.malloc]
        if self.uvloop:
            args.append("--uvloop")
        for key, value in self.channel_options:
            args += ["--option", f"{key}={value}"]
        return args


MAIN_SETUPS = [
    Setup("raw socket, asyncio", "raw", uvloop=False),
    Setup("raw socket, uvloop", "raw", uvloop=True),
    Setup("bare grpc.aio bytes, uvloop", "bare", uvloop=True),
    Setup("gRPC, asyncio", "grpc", uvloop=False),
    Setup("gRPC, uvloop", "grpc", uvloop=True),
]


def experiment_setups() -> list[Setup]:
    """Variations of gRPC + uvloop tried for latency and throughput."""
    base: dict[str, Any] = {"kind": "grpc", "uvloop": True}
    return [
        Setup("poll strategy: poll", **base, env={"GRPC_POLL_STRATEGY": "poll"}),
        Setup("poll strategy: epoll1", **base, env={"GRPC_POLL_STRATEGY": "epoll1"}),
        Setup("BDP probe off", **base, channel_options=(("grpc.http2.bdp_probe", 0),)),
        Setup(
            "tcp_read_chunk_size 4 MiB",
            **base,
            channel_options=(("grpc.experimental.tcp_read_chunk_size", 4 * MIB),),
        ),
        Setup(
            "tcp read chunk min 512 KiB, 1 MiB",
            **base,
            channel_options=(
                ("grpc.experimental.tcp_min_read_chunk_size", 512 * KIB),
                ("grpc.experimental.tcp_read_chunk_size", MIB),
            ),
        ),
        Setup(
            "8 MiB initial window, BDP off",
            **base,
            channel_options=(
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", 8 * MIB),
            ),
        ),
        Setup(
            "max_concurrent_streams 16",
            **base,
            channel_options=(("grpc.max_concurrent_streams", 16),),
        ),
        Setup(
            "http2 max_frame_size 1 MiB",
            **base,
            channel_options=(("grpc.http2.max_frame_size", MIB),),
        ),
        Setup(
            "http2 write_buffer_size 4 MiB",
            **base,
            channel_options=(("grpc.http2.write_buffer_size", 4 * MIB),),
        ),
        Setup("chunk 256 KiB", **base, chunk_bytes=256 * KIB),
        Setup("chunk 2 MiB", **base, chunk_bytes=2 * MIB),
        Setup("chunk 3.5 MiB", **base, chunk_bytes=3 * MIB + MIB // 2),
        Setup("no malloc tuning", **base, malloc="none"),
        Setup("malloc thresholds only (mmap allowed)", **base, malloc="mmap"),
    ]


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    sizes: list[int]
    stream_bytes: int  # per one-way throughput point
    rtt_count: int
    hop_count: int

    @staticmethod
    def make(quick: bool, *, smoke: bool = False) -> Plan:
        if smoke:
            return Plan(SIZES_BYTES, stream_bytes=64 * MIB, rtt_count=4, hop_count=10)
        if quick:
            return Plan(SIZES_BYTES, stream_bytes=192 * MIB, rtt_count=15, hop_count=40)
        return Plan(SIZES_BYTES, stream_bytes=768 * MIB, rtt_count=40, hop_count=200)
