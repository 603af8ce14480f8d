"""Write the original tensorblob's fixtures here. Run with tensorblob 0.3.0 first on sys.path:

    pip install --no-deps --target /tmp/origpkg tensorblob==0.3.0 just-config-mixin orjson
    PYTHONPATH=/tmp/origpkg python tests/data/orig-0.3/make.py

tests/test_transfer.py imports them and recomputes the same rows (``expected``).
"""

from __future__ import annotations

import os
import shutil

import torch

from tensorblob import TensorBlob, TensorDB  # the original library, 0.3.0


def expected_db() -> dict[str, torch.Tensor]:
    """The committed records of the fixture database ``rl.db`` (10, in blocks of 4)."""
    i = torch.arange(10)
    return {
        "obs": (i.reshape(10, 1, 1) * 3 + torch.arange(6).reshape(1, 2, 3)).to(torch.uint8),
        "action": i * 10 - 3,
        "reward": i.to(torch.float32) / 8,
        "done": i % 4 == 3,
    }


def expected() -> dict[str, torch.Tensor]:
    """The rows each fixture blob holds."""
    return {
        "f32.blob": (torch.arange(60, dtype=torch.float32) / 7).reshape(10, 2, 3),
        "bf16.blob": (torch.arange(7, dtype=torch.float32) * 0.37 - 1).to(torch.bfloat16),
        "i64-truncated.blob": torch.arange(15, dtype=torch.int64).reshape(5, 3) - 7,
        "empty.blob": torch.empty(0, 4, dtype=torch.uint8),
    }


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rows = expected()
    for name in [*rows, "db", "rl.db"]:
        shutil.rmtree(os.path.join(here, name), ignore_errors=True)
    with TensorBlob.open(
        os.path.join(here, "f32.blob"), "w", dtype="float32", shape=(2, 3), block_size=4
    ) as b:
        b.write(rows["f32.blob"])
    with TensorBlob.open(
        os.path.join(here, "bf16.blob"), "w", dtype=torch.bfloat16, shape=(), block_size=3
    ) as b:
        b.write(rows["bf16.blob"])
    with TensorBlob.open(
        os.path.join(here, "i64-truncated.blob"), "w", dtype="int64", shape=3, block_size=4
    ) as b:
        b.write(torch.arange(27, dtype=torch.int64).reshape(9, 3) - 7)
        b.truncate(5)  # deletes the third block file
    with TensorBlob.open(os.path.join(here, "empty.blob"), "w", dtype="uint8", shape=4) as b:
        pass
    with TensorDB.open(
        os.path.join(here, "db"),
        "w",
        schema={"obs": ("float32", 3), "done": ("bool", ())},
        block_size=4,
    ) as db:
        db.write({"obs": torch.ones(6, 3), "done": torch.zeros(6, dtype=torch.bool)})
    rl = os.path.join(here, "rl.db")
    schema = {
        "obs": ("uint8", (2, 3)),
        "action": ("int64", ()),
        "reward": ("float32", ()),
        "done": ("bool", ()),
    }
    with TensorDB.open(rl, "w", schema=schema, block_size=4) as db:
        db.write(expected_db())
    # A crash of the original between two fields' writes: "reward" is two rows
    # longer than the database's committed length.
    with TensorBlob.open(os.path.join(rl, "reward"), "a") as col:
        col.write(torch.tensor([99.0, 98.0]))


if __name__ == "__main__":
    main()
