"""Write the golden files here: tiny stores of this version's format, committed to git.

    python tests/data/golden/make.py

Run once per format version; tests/test_db.py opens them (blob-v2: a
TensorBlob, format version 2; db-v4: a TensorDB, whose meta is version 4)
and must keep opening them in every later version.
"""

from __future__ import annotations

import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]

from test_db import SCHEMA, recs  # noqa: E402

from tensorblob import TensorBlob, TensorDB  # noqa: E402


def main() -> None:
    blob, db = os.path.join(HERE, "blob-v2"), os.path.join(HERE, "db-v4")
    for p in (blob, db):
        shutil.rmtree(p, ignore_errors=True)
    with TensorBlob.open(blob, "w", dtype="float32", shape=3, block_size=4) as b:
        b.write(torch.arange(21, dtype=torch.float32).reshape(7, 3))
    with TensorDB.open(db, "w", schema=SCHEMA, block_size=4) as d:
        d.write({k: v[:3] for k, v in recs(7).items()})
        d.flush()  # a durable point in the journal, then more records after it
        d.write({k: v[3:] for k, v in recs(7).items()})


if __name__ == "__main__":
    main()
