#!/usr/bin/env python3
"""Reads TensorBoard event files that medllm wrote with the PyPI `tensorboard` reader and checks every record's
framing and CRCs with tensorboard's own masked CRC-32C (training.md §4). Prints the scalar tags and their points.
  .venv/bin/python scripts/check_tensorboard.py runs/cpt-tiny        # a run folder or an event file
Exit 1 when a record is damaged or no scalars are found."""
import glob
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c


def check_records(path):
    data = open(path, "rb").read()
    pos, n = 0, 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if masked_crc32c(header) != len_crc or masked_crc32c(body) != body_crc:
            sys.exit(f"{path}: record {n} at byte {pos}: CRC mismatch")
        pos += 16 + length
        n += 1
    return n


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "."
    files = [target] if os.path.isfile(target) else sorted(glob.glob(os.path.join(target, "events.out.tfevents.*")))
    if not files:
        sys.exit(f"no event files in {target}")
    for f in files:
        records = check_records(f)
        ea = EventAccumulator(f)
        ea.Reload()
        tags = ea.Tags()["scalars"]
        if not tags:
            sys.exit(f"{f}: no scalars")
        print(f"{f}: {records} records, CRCs ok")
        for t in tags:
            pts = ea.Scalars(t)
            print(f"  {t}: {len(pts)} points, step {pts[0].step}..{pts[-1].step}, last {pts[-1].value:.6g}")


if __name__ == "__main__":
    main()
