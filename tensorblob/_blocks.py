"""Block mappings: blocks mapped into memory through an LRU cache (F8).

Blocks are mapped with tensordict's ``MemoryMappedTensor``: shared (writes
reach the file) for a writer, copy-on-write private for a reader, so a
reader never needs write permission. At most ``max_cached`` blocks stay
mapped. ``BlockStore`` is ``_blockfiles.BlockFiles`` plus the mappings;
tensordict is imported when the first block is mapped, not before.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import zlib
from collections import OrderedDict

import numpy as np
import torch

from ._blockfiles import BlockFiles, sum_mismatch
from ._meta import Meta
from .errors import NOTHING_COMMITTED, BlobOSError, CorruptBlobError, from_os_error

_libc = ctypes.CDLL(None, use_errno=True)
_madvise = getattr(_libc, "madvise", None)
if _madvise is not None:
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_NORMAL, MADV_RANDOM = 0, 1
_frombuffer = torch.frombuffer


def advise(mapping: np.ndarray, advice: int) -> None:
    """Tell the kernel how ``mapping`` (a whole mapped block) will be accessed. A hint only.

    The write window sets MADV_RANDOM while it fills a block: with the
    default, the faults on the first rows' unwritten pages start readahead,
    which fills the page cache ahead of the rows with small folios; the
    zeroing ahead (``_durable.prefill``) then finds them there instead of
    creating 2 MiB folios, and every page of the block takes its own page
    fault (docs/performance.md, "Readahead and the write window").
    """
    if _madvise is not None:
        addr = mapping.ctypes.data
        _madvise(addr & ~4095, mapping.nbytes + (addr & 4095), advice)


def _map_limit() -> int:
    """The kernel's limit on a process's memory maps (vm.max_map_count)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 65530


@functools.cache
def default_max_cached() -> int:
    """A sixteenth of the kernel's map-count limit (at least 128): room for everything else."""
    return max(128, _map_limit() // 16)


class _Span:
    """Exposes, to ``np.asarray``, the ``n`` bytes at address ``addr`` as a uint8 array.

    It may cover gaps between mappings: only bytes of mapped blocks may be
    read through it. It is declared writable only because torch warns about
    read-only arrays; nothing writes through it.
    """

    def __init__(self, addr: int, n: int) -> None:
        self.__array_interface__ = {
            "version": 3,
            "data": (addr, False),
            "shape": (n,),
            "typestr": "|u1",
        }


_Entry = tuple[tuple[torch.Tensor, ...], tuple[np.ndarray, ...], int, np.ndarray, memoryview]


class BlockStore(BlockFiles):
    """Block files, and their mappings: for each field, a tensor ``(block_size, *shape)``
    and the same memory as a ``(block_size, row_bytes)`` uint8 array; LRU-bounded."""

    def __init__(self, root: str, meta: Meta, *, writable: bool, max_cached: int) -> None:
        super().__init__(root, meta)
        self.writable = writable
        self.max_cached = max_cached
        # id -> (the fields' rows tensors, their uint8 arrays, the mapping's
        # address, the whole mapping as a uint8 array and as a memoryview)
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        # Checksums to verify each block against when it is first mapped
        # (``TensorBlob.open(verify=True)``); None: no verification.
        self.verify: dict[int, tuple[int, tuple[int, ...]]] | None = None
        # A reader's rows logged in the journal that the block files may lack
        # after a power cut (State.logged): block id -> [(byte offset, bytes)],
        # laid over the block's private mapping when it is mapped.
        self.logged: dict[int, list[tuple[int, bytes]]] = {}

    def set_logged(self, chunks: list[tuple[int, int, bytes]]) -> None:
        """Lay ``chunks`` (``State.logged``) over this reader's mappings from now on.

        Blocks mapped with the chunks of an earlier snapshot, or without
        those of this one, are mapped again: a page a chunk was written into
        is this process's copy, and no longer shows the file.
        """
        if not chunks and not self.logged:
            return
        new: dict[int, list[tuple[int, bytes]]] = {}
        for bid, off, data in chunks:
            new.setdefault(bid, []).append((off, data))
        for bid in set(new) | set(self.logged):
            self._cache.pop(bid, None)
        self.logged = new

    def get(self, bid: int, f: int = 0) -> torch.Tensor:
        """Field ``f`` of block ``bid`` as a tensor ``(block_size, *shape)`` over the mapping."""
        return self._entry(bid)[0][f]

    def get_bytes(self, bid: int, f: int = 0) -> np.ndarray:
        """Field ``f`` of block ``bid`` as a ``(block_size, row_bytes)`` uint8 array over the
        mapping."""
        return self._entry(bid)[1][f]

    def row(self, bid: int, off: int, f: int = 0) -> torch.Tensor:
        """A copy of row ``off`` of field ``f`` of block ``bid``, as a new tensor of the row
        shape.

        The row's bytes are copied into a ``bytearray`` (one memcpy from the
        mapping), which ``torch.frombuffer`` wraps without a second copy: about
        1.5 us against 2.8 for ``block[off].clone()`` (docs/performance.md,
        "One row"). Its storage is the bytearray's, so it cannot be resized in
        place (``resize_``); everything else is as for any tensor.
        """
        e = self._cache.get(bid)
        if e is None:
            e = self._entry(bid)
        else:
            self._cache.move_to_end(bid)
        fld = self.meta.fields[f]
        rb = fld.row_bytes
        o = fld.offset + off * rb
        t = _frombuffer(bytearray(e[4][o : o + rb]), dtype=fld.dtype)
        return t if len(fld.shape) == 1 else t.view(fld.shape)

    def whole(self, bid: int) -> np.ndarray:
        """Block ``bid``'s whole mapping as a uint8 array (field ``f`` at ``Field.offset``)."""
        return self._entry(bid)[3]

    def gather(
        self,
        blocks: list[int],
        slots: np.ndarray,
        offs: np.ndarray,
        f: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Row ``offs[i]`` of field ``f`` of the block in slot ``slots[i]``, for each i, as
        ``(n, row_bytes)`` uint8 (into ``out`` if given: of that shape). The caller has
        checked every slot and offset.

        At most ``max_cached`` blocks are mapped at once: rows from more
        distinct blocks are taken a group of blocks at a time.
        """
        distinct, which = np.unique(slots, return_inverse=True)
        m = self.max_cached
        if len(distinct) <= m:
            return self._gather_group(blocks, distinct, which, offs, f, out)
        if out is None:
            out = torch.empty((len(slots), self.meta.fields[f].row_bytes), dtype=torch.uint8)
        if self.verify is None:
            self._gather_unmapped(blocks, distinct, which, offs, f, out.numpy())
            return out
        for g in range(0, len(distinct), m):
            sel = np.flatnonzero((which >= g) & (which < g + m))
            part = self._gather_group(blocks, distinct[g : g + m], which[sel] - g, offs[sel], f)
            out[torch.from_numpy(sel)] = part
        return out

    def _gather_group(  # noqa: PLR0917 - the parts of one gather
        self,
        blocks: list[int],
        group: np.ndarray,
        which: np.ndarray,
        offs: np.ndarray,
        f: int,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Row ``offs[i]`` of field ``f`` of the block in slot ``group[which[i]]``, for each i.

        One ``index_select`` over a view of the address range that spans the
        group's mappings (``_Span``), not one copy per block: with rows spread
        over many blocks the per-block calls cost more than the copies, and
        ``index_select`` copies rows in parallel on torch's threads
        (docs/performance.md, "Gathers in one call").
        """
        fld = self.meta.fields[f]
        rb = fld.row_bytes
        # The entries (held until this returns) keep their mappings alive
        # until the copy is done, even if the cache evicts them meanwhile.
        entries = [self._entry(blocks[s]) for s in group.tolist()]
        addrs = [e[2] for e in entries]
        base = min(addrs)
        size = max(addrs) - base + self.nbytes
        at = (np.array(addrs, dtype=np.int64) - base)[which] + (fld.offset + offs * rb)
        # Row r of this view is the rb bytes at base + r: rows overlap, and
        # only the offsets of rows inside the group's blocks are used.
        span = torch.from_numpy(np.asarray(_Span(base, size)))
        rows = span.as_strided((size - rb + 1, rb), (1, 1))
        if out is None:
            return torch.index_select(rows, 0, torch.from_numpy(at))
        return torch.index_select(rows, 0, torch.from_numpy(at), out=out)

    def _gather_unmapped(  # noqa: PLR0917 - gather()'s arguments
        self,
        blocks: list[int],
        distinct: np.ndarray,
        which: np.ndarray,
        offs: np.ndarray,
        f: int,
        dst: np.ndarray,
    ) -> None:
        """``gather`` from more blocks than stay mapped, block by block: from the mapping of
        a mapped block, else from one ``pread`` of the rows it spans (see ``_span_unmapped``)."""
        rb = self.meta.fields[f].row_bytes
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(distinct) + 1))
        get, logged = self._cache.get, self.logged
        for k, slot in enumerate(distinct.tolist()):
            idx = order[bounds[k] : bounds[k + 1]]
            at = offs[idx]
            bid = blocks[slot]
            e = get(bid) if bid not in logged else self._entry(bid)
            if e is not None:
                dst[idx] = e[1][f][at]
                continue
            lo, hi = int(at.min()), int(at.max()) + 1
            rows = np.empty((hi - lo, rb), dtype=np.uint8)
            self.read_rows(bid, f, lo, hi, rows)
            dst[idx] = rows[at - lo]
        self._check_home(self.dir)  # every file read was this blob's (one stat for all)

    def span_into(self, blocks: list[int], f: int, start: int, stop: int, dst: np.ndarray) -> None:
        """Copy rows ``start:stop`` of field ``f`` of the snapshot whose slot list is
        ``blocks`` into ``dst``, C-contiguous ``(stop - start, row_bytes)`` uint8.

        One ``np.concatenate`` of the blocks' arrays (one C loop of copies, not
        a call per block: for a small field the per-block calls cost as much as
        the copies), at most ``max_cached`` blocks at a time, whose entries are
        held until it is done so that their mappings stay alive.
        """
        B, pos, at = self.meta.block_size, start, 0
        if (stop - 1) // B - start // B >= self.max_cached and self.verify is None:
            self._span_unmapped(blocks, f, start, stop, dst)
            return
        cache, entry = self._cache, self._entry
        get, touch = cache.get, cache.move_to_end
        while pos < stop:
            s0, off = divmod(pos, B)
            s1 = min((stop - 1) // B + 1, s0 + self.max_cached)
            parts = []
            for bid in blocks[s0:s1]:
                e = get(bid)
                if e is None:
                    e = entry(bid)
                else:
                    touch(bid)
                parts.append(e[1][f])
            end = min(stop, s1 * B)
            last = end - (s1 - 1) * B  # rows of the last block copied
            if len(parts) == 1:
                parts[0] = parts[0][off:last]
            else:
                parts[0], parts[-1] = parts[0][off:], parts[-1][:last]
            np.concatenate(parts, out=dst[at : at + end - pos])
            at += end - pos
            pos = end

    def _span_unmapped(
        self, blocks: list[int], f: int, start: int, stop: int, dst: np.ndarray
    ) -> None:
        """``span_into`` over more blocks than stay mapped: the mapped ones copied from their
        mappings, the others read with ``pread`` (``BlockFiles.read_rows``), block by block.

        Mapping them would evict, at every such read, the blocks the next one
        needs first: each call would map every block again (about 150 us a
        block, against 10 for the ``pread`` of 32 KiB). A block with rows
        logged in the journal is mapped, as they are laid over its mapping.
        """
        B, pos, at = self.meta.block_size, start, 0
        get, logged = self._cache.get, self.logged
        while pos < stop:
            s, off = divmod(pos, B)
            end = min(stop, (s + 1) * B)
            bid = blocks[s]
            e = get(bid) if bid not in logged else self._entry(bid)
            if e is not None:
                dst[at : at + end - pos] = e[1][f][off : off + end - pos]
            else:
                self.read_rows(bid, f, off, off + end - pos, dst[at : at + end - pos])
            at += end - pos
            pos = end
        self._check_home(self.dir)  # every file read was this blob's (one stat for all)

    def _entry(self, bid: int) -> _Entry:
        cache = self._cache
        e = cache.get(bid)
        if e is not None:
            cache.move_to_end(bid)
            return e
        raw = self._map(bid)
        if bid in self.logged and not self.writable:
            for off, data in self.logged[bid]:
                raw[off : off + len(data)] = _frombuffer(bytearray(data), dtype=torch.uint8)
        B = self.meta.block_size
        tensors, arrays = [], []
        for fld in self.meta.fields:
            part = raw[fld.offset : fld.offset + B * fld.row_bytes]
            arrays.append(part.view(B, fld.row_bytes).numpy())
            tensors.append(part.view(fld.dtype).view(B, *fld.shape))
        whole = raw.numpy()
        e = (tuple(tensors), tuple(arrays), raw.data_ptr(), whole, memoryview(whole).cast("B"))
        if self.verify is not None and bid in self.verify:
            self._verify(bid, e[1])
        cache[bid] = e
        if len(cache) > self.max_cached:
            cache.popitem(last=False)
        return e

    def _map(self, bid: int) -> torch.Tensor:
        """Block ``bid``'s file mapped as one uint8 tensor."""
        path = self.path(bid)
        # Imported first (at the first mapping only; it takes a second or more),
        # so that the file is checked right before it is mapped.
        from tensordict import MemoryMappedTensor  # noqa: PLC0415

        self._check_size(path)
        mode = "r+" if self.writable else "r"
        try:
            mmt = MemoryMappedTensor.from_filename(
                path, dtype=torch.uint8, shape=(self.nbytes,), mode=mode
            )
        except RuntimeError as exc:  # torch's error for a file that cannot be opened or mapped
            self._check_size(path)  # gone or cut since the check: the library's error
            if not self._cache:
                raise self._unmappable(path, exc) from exc
            # Most often the process is out of memory maps (vm.max_map_count)
            # or address space: give back this handle's and try once more.
            self._cache.clear()
            try:
                mmt = MemoryMappedTensor.from_filename(
                    path, dtype=torch.uint8, shape=(self.nbytes,), mode=mode
                )
            except RuntimeError as again:
                raise self._unmappable(path, again) from again
        self._check_home(path)  # the file mapped is this blob's
        # A plain tensor view of the same mapped storage: indexing it skips the
        # subclass dispatch of MemoryMappedTensor on every row access.
        return mmt.as_subclass(torch.Tensor)

    def _unmappable(self, path: str, exc: RuntimeError) -> BlobOSError:
        """The library's error for block file ``path`` that exists but cannot be mapped.

        torch's error carries no errno: the same mapping, made with Python's
        ``mmap``, gives the system's reason, and ``from_os_error`` its class.
        """
        try:
            with open(path, "r+b" if self.writable else "rb") as f:
                access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_COPY
                mmap.mmap(f.fileno(), self.nbytes, access=access).close()
        except OSError as err:
            err.filename = path  # mmap's error names no file
            status = NOTHING_COMMITTED
            if err.errno == errno.ENOMEM:
                status += (
                    " The process is out of memory maps (the kernel's vm.max_map_count, "
                    f"{_map_limit()}) or address space. Each open handle keeps up to "
                    f"max_cached_blocks blocks mapped ({self.max_cached} here): close "
                    "handles, open them with a smaller max_cached_blocks, or raise "
                    "vm.max_map_count."
                )
            root = os.path.dirname(self.dir)
            return from_os_error(err, root, "mapping a block file", status, kind=self.meta.noun)
        return BlobOSError(f"block file {path!r} cannot be mapped ({exc}). {NOTHING_COMMITTED}")

    def _verify(self, bid: int, data: tuple[np.ndarray, ...]) -> None:
        assert self.verify is not None
        rows, want = self.verify[bid]
        got = tuple(zlib.crc32(a[:rows]) for a in data)
        wrong = sum_mismatch(self.meta, bid, 0, rows, got, want)
        if wrong:
            raise CorruptBlobError(
                f"block file {self.path(bid)!r}: {wrong}. Run `tensorblob check --deep`",
                path=self.path(bid),
                reason="block-checksum",
            )

    def crc(
        self, bid: int, start: int, stop: int, seeds: tuple[int, ...] | None = None
    ) -> tuple[int, ...]:
        """``BlockFiles.crc``; a block this handle has mapped already (checked for its
        size then) is read through that mapping, without a system call."""
        e = self._cache.get(bid)
        if e is not None:
            seeds = seeds or (0,) * len(e[1])
            return tuple(
                zlib.crc32(a[start:stop], seed) for a, seed in zip(e[1], seeds, strict=True)
            )
        return super().crc(bid, start, stop, seeds)

    def delete(self, bid: int) -> bool:
        self._cache.pop(bid, None)
        return super().delete(bid)

    def forget(self, bid: int) -> None:
        self._cache.pop(bid, None)

    def close(self) -> None:
        self._cache.clear()
