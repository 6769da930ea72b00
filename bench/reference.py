"""Integer-reference and float-model speed on one zoo model; prints JSON.

    .venv/bin/python bench/reference.py --model m3vit-tiny-224 [--images 16] [--batch 8]

Images/s of the integer reference (calibration excluded) and of the float model (PyTorch, CPU),
and the model's multiply-accumulates per image by kind.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from accel.models.data import eval_set
from accel.models.quantize import load_pair


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="m3vit-tiny-224")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fm, ref = load_pair(args.model)
    calib_s = time.perf_counter() - t0
    images = eval_set(fm.cfg, args.images).images
    n = len(images)
    q = ref.quantize_images(images)
    ref.run(q[:1])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, n, args.batch):
        ref.run(q[i:i + args.batch])
    int_s = time.perf_counter() - t0
    x = torch.from_numpy(images)
    with torch.no_grad():
        fm(x[:1])
        t0 = time.perf_counter()
        for i in range(0, n, args.batch):
            fm(x[i:i + args.batch])
        float_s = time.perf_counter() - t0
    macs = fm.cfg.macs_per_image()
    print(json.dumps({
        "model": fm.cfg.name, "images": n, "batch": args.batch,
        "int_images_per_s": round(n / int_s, 3), "float_images_per_s": round(n / float_s, 3),
        "calibration_s": round(calib_s, 2), "macs_per_image": macs,
        "gmac_per_image": round(macs["total"] / 1e9, 4),
        "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
