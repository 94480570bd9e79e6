"""The codec's own cost for a ~400 KB tensor, in process."""

from __future__ import annotations

import time

import numpy as np

from _transport.setups import HOP_BYTES


def codec_costs() -> dict[str, float]:
    """In-process cost of the codec for a ~400 KB tensor (encode + decode), microseconds."""
    from edgenode.transport import FrameDecoder, RequestId, Tensor, encode_frames

    array = np.random.default_rng(0).standard_normal(HOP_BYTES // 4).astype(np.float32)
    tensor = Tensor(RequestId("r"), "x", array)
    frames = list(encode_frames([tensor]))
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        list(encode_frames([tensor]))
    encode = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        FrameDecoder().feed(frames[0])
    decode = (time.perf_counter() - start) / n * 1e6
    return {"encode_400k_us": encode, "decode_400k_us": decode}
