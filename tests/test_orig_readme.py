"""The original tensorblob's README examples, run as they are written (issue 18).

Each example below is copied verbatim from the README of tensorblob 0.3.0
(Apache-2.0; the original library this package follows). The examples run
in order, in one namespace, in a fresh directory, as a new user pasting them
would; the names they take from the user's program (``data_loader``,
``preprocess``, ``model``, ``other_blob``, ...) are defined first, with fake
data. Only what the examples themselves do is asserted: that they run, and
that what they print and leave behind is what they say.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
import torch

import tensorblob
from tensorblob import TensorBlob, TensorDB

EXAMPLES = [
    # Quick start
    """
import torch
from tensorblob import TensorBlob

# Create a new storage for a collection of randomly generated fake embeddings;
# need to specify the data type and shape of each tensor for creation
with TensorBlob.open("embeddings.blob", "w", dtype="float32", shape=768) as blob:
    blob.write(torch.randn(100_000, 768))
    print(f"Wrote {len(blob)} embeddings")

# No need to specify the configurations again after creation
with TensorBlob.open("embeddings.blob", "r") as blob:
    e1 = blob[42]
    e2 = blob[-1:16384:-12345]
    print(f"Similarity: {torch.cosine_similarity(e1, e2)}")
""",
    # Processing Large Datasets
    """
with TensorBlob.open("data/images.blob", "w", dtype="float32", shape=(3, 224, 224)) as blob:
    for image_batch in data_loader:
        blob.write(preprocess(image_batch))

with TensorBlob.open("data/images.blob", "r") as blob:
    for image in blob:
        result = model(image)
""",
    # Incremental Data Collection
    """
with TensorBlob.open("positions.blob", "w", dtype="float32", shape=3) as blob:
    blob.write(initial_position)

# Later: append more data by opening the blob in append mode
with TensorBlob.open("positions.blob", "a") as blob:
    for pos in trajectory_queue.get():
        blob.write(pos)
    print(f"Total trajectory recorded: {len(blob)}")
""",
    # Random Access and Updates with File-Like APIs
    """
import io

with TensorBlob.open("data/features.blob", "r+") as blob:
    blob.seek(1000)
    print(f"Current position: {blob.tell()}")

    batch = blob.read(size=100)
    print(f"Read {batch.shape} tensors")

    # Update specific positions, whence is also supported
    blob.seek(-500, whence=io.SEEK_END)
    blob.write(updated_features)

    # Append new data
    blob.seek(len(blob))
    blob.write(additional_features)
""",
    # Extend and Truncate
    """
with TensorBlob.open("data/features.blob", "a") as blob:
    blob.extend(other_blob)

# Extension without maintaining the order is faster
with TensorBlob.open("data/features.blob", "r+") as blob:
    blob.extend(other_blob, maintain_order=False)

with TensorBlob.open("data/features.blob", "r+") as blob:
    blob.truncate(1000)
    print(f"Truncated to {len(blob)} tensors")
""",
    # Heterogeneous Data with TensorDB
    """
from tensorblob import TensorDB

# Create a database with a fixed schema mapping field names to (dtype, shape)
with TensorDB.open("events.db", "w",
                   schema={"price": ("float32", 1),
                           "embed": ("float16", 768)}) as db:
    # Rows are dense: every write must supply every field with the same row count
    db.write({"price": torch.randn(100_000, 1),
              "embed": torch.randn(100_000, 768).half()})
    print(f"Wrote {len(db)} rows")

# No need to specify the schema again after creation
with TensorDB.open("events.db", "r") as db:
    row = db[42]          # {"price": tensor of shape (1,), "embed": (768,)}
    batch = db[10:100]    # {"price": (90, 1), "embed": (90, 768)}
    print(f"Fields: {list(batch)}, price range: {batch['price'].min()}..{batch['price'].max()}")
""",
    """
with TensorDB.open("events.db", "r+") as db:
    db.seek(1000)
    batch = db.read(size=100)                 # dict of (100, ...) tensors

    db.seek(-500, whence=io.SEEK_END)
    db.write({"price": new_prices, "embed": new_embeds})  # overwrite in place

    db.truncate(10_000)                       # truncate all fields at once
    db.extend(other_db, maintain_order=False) # merge another db with the same schema

# Cleanup removes the whole database directory
TensorDB.unlink("events.db")
""",
    # Memory Management
    """
# Increase cache for better random access performance
with TensorBlob.open("large.blob", "r", max_cached_blocks=10_000) as blob:
    for idx in random_indices:
        tensor = blob[idx]  # Cached blocks reused efficiently

# Decrease cache for memory-constrained environments
with TensorBlob.open("data.blob", "r", max_cached_blocks=100) as blob:
    for tensor in blob:  # Sequential access works fine with small cache
        process(tensor)
""",
]


class _Queue:
    def get(self) -> list[torch.Tensor]:
        return list(torch.arange(12, dtype=torch.float32).reshape(4, 3))


def _users_program(tmp: str) -> dict[str, Any]:
    """What the examples take from the user's program: fake data, made here."""
    seen: list[torch.Tensor] = []
    with TensorBlob.open("data/features.blob", "w", dtype="float32", shape=16) as b:
        b.write(torch.arange(3000 * 16, dtype=torch.float32).reshape(3000, 16))
    with TensorBlob.open("other.blob", "w", dtype="float32", shape=16, block_size=8192) as b:
        b.write(-torch.ones(9000, 16))
    with TensorDB.open(
        "other.db", "w", schema={"price": ("float32", 1), "embed": ("float16", 768)}
    ) as d:
        d.write({"price": torch.full((10, 1), 7.0), "embed": torch.zeros(10, 768).half()})
    with TensorBlob.open("large.blob", "w", dtype="int64", shape=2, block_size=64) as b:
        b.write(torch.arange(2000).reshape(1000, 2))
    with TensorBlob.open("data.blob", "w", dtype="float32", shape=()) as b:
        b.write(torch.arange(300, dtype=torch.float32))
    return {
        "data_loader": [torch.rand(2, 3, 224, 224) for _ in range(3)],
        "preprocess": lambda batch: batch * 2 - 1,
        "model": lambda image: image.mean(),
        "initial_position": torch.zeros(3),
        "trajectory_queue": _Queue(),
        "updated_features": torch.full((500, 16), 5.0),
        "additional_features": torch.full((20, 16), 6.0),
        "other_blob": TensorBlob.open("other.blob", "r"),
        "new_prices": torch.full((500, 1), 3.0),
        "new_embeds": torch.ones(500, 768).half(),
        "other_db": TensorDB.open("other.db", "r"),
        "random_indices": torch.randint(0, 1000, (200,)).tolist(),
        "process": seen.append,
        "_seen": seen,
    }


@pytest.mark.filterwarnings("error")
def test_the_original_readme_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = _users_program(str(tmp_path))
    try:
        for code in EXAMPLES:
            exec(compile(code, "<original README example>", "exec"), ns)
    finally:
        ns["other_blob"].close()
        ns["other_db"].close()
    out = capsys.readouterr().out
    assert "Wrote 100000 embeddings" in out
    assert "Similarity: tensor([" in out
    assert "Total trajectory recorded: 5" in out
    assert "Current position: 1000" in out
    assert "Read torch.Size([100, 16]) tensors" in out
    assert "Truncated to 1000 tensors" in out
    assert "Wrote 100000 rows" in out
    assert "Fields: ['price', 'embed']" in out
    # What they left behind: the parent directory "data" was created (the
    # original does so), the database is gone, the images are all there.
    with TensorBlob.open(os.path.join("data", "images.blob")) as blob:
        assert len(blob) == 6
    assert not os.path.exists("events.db")
    assert len(ns["_seen"]) == 300
    with TensorBlob.open("data/features.blob") as blob:
        assert torch.equal(blob[:], torch.arange(1000 * 16, dtype=torch.float32).view(1000, 16))
    assert io.SEEK_END == 2
    assert tensorblob.TensorDB is TensorDB
