"""Stage-1 slabs exact (fp32) and on the fast CPU path (bf16), alternating, one thread.

``python -m experiments.bench.stage1_ab``: the f32_d5 Stage-1 net (untrained) over 24 axial
slices of a volume the size of the real case's brain crop, padded to the 192^2 canvas as the
predictor does; exact and fast alternate three times, so a machine shared with other work slows
both alike and the ratio of each pair holds where rows timed minutes apart do not.
"""

from __future__ import annotations

import time

import torch

from cascade.inference.multiview import predict_view
from cascade.nn.unet2d import UNet2d

SLICES = 24


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = UNet2d(20, 4, filters=32, depth=5, norm="instance", activation="leaky_relu").eval()
    image = torch.randn(4, 153, 179, SLICES)
    milliseconds: dict[bool, list[float]] = {False: [], True: []}
    with torch.inference_mode():
        for _ in range(3):
            for fast in (False, True):
                start = time.perf_counter()
                predict_view(net, image, 5, "axial", 1, False, (192, 192), cpu_bf16=fast)
                milliseconds[fast].append(1e3 * (time.perf_counter() - start) / SLICES)
    pairs = zip(milliseconds[False], milliseconds[True], strict=True)
    ratios = [fast / exact for exact, fast in pairs]
    print("ms per slab, exact:", " ".join(f"{value:.0f}" for value in milliseconds[False]))
    print("ms per slab, fast: ", " ".join(f"{value:.0f}" for value in milliseconds[True]))
    print("fast / exact, each pair:", " ".join(f"{ratio:.2f}" for ratio in ratios))


if __name__ == "__main__":
    main()
