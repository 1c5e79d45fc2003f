"""The Merkle tree over the ledger (DESIGN.md §8.1, RFC 9162 §2.1): hashes, a stored tree, proofs.

Leaf i is ledger entry idx i; its leaf data is ``b"timeclock/ledger/v1\\n" + canonical(entry)``,
the very bytes whose SHA-256 is the entry hash of §6, so a ledger has one byte form for both its
``prev`` chain and its tree. Leaf hash = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ l ‖ r), and
the empty tree's root is SHA-256 of the empty string.

Storage (docs/protocol.md §12.2): only *complete* subtrees are stored, addressed ``(level,
index)``: the node at (L, k) is the hash of the 2**L leaves k·2**L … (k+1)·2**L − 1; level 0
holds the leaf hashes. A complete subtree never changes once its last leaf is appended, so the
store is append-only like the ledger, and a SQL table ``(level, idx) -> hash`` with that primary
key is all it takes. Appending n leaves to a tree of size s stores exactly the nodes whose last
leaf is among them (< 2 per leaf). Every root and proof for any size up to the stored size is a
right fold of O(log n) stored nodes (the binary decomposition of a range into complete
subtrees), read in one :meth:`HashReader.get_nodes` call; nothing is recomputed from leaves.

Verification (:func:`verify_inclusion`, :func:`verify_consistency`) is pure and follows RFC 9162
§2.1.3.2 / §2.1.4.2 step by step; every failure raises :class:`ProofError` naming what failed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wire.errors import DecodeError, ProofError
from wire.fields import get_int, require_object
from wire.keys import b64decode_strict
from wire.ledger import LEDGER_DOMAIN, Entry

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# A tree size fits canonical JSON (≤ 2^53 − 1), so no proof has more than 2·53 hashes.
MAX_TREE_SIZE = 2**53 - 1
MAX_PROOF_HASHES = 128

Address = tuple[int, int]
"""(level, index): the complete subtree of 2**level leaves starting at leaf index·2**level."""

Node = tuple[int, int, bytes]
"""(level, index, hash): one row to store."""


def leaf_hash(leaf_data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf_data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def entry_leaf_data(entry: Entry) -> bytes:
    """The leaf data of a ledger entry: the bytes whose SHA-256 is :meth:`Entry.hash`."""
    return LEDGER_DOMAIN + entry.to_bytes()


def entry_leaf_hash(entry: Entry) -> bytes:
    return leaf_hash(entry_leaf_data(entry))


class HashReader(Protocol):
    """Read access to stored complete-subtree nodes.

    ``get_nodes`` returns the hashes at ``addresses`` in order, or raises :class:`ProofError`
    if one is missing (a store that lost a node cannot prove anything under it). It is given
    every address one root or proof needs at once, so a SQL store answers with one query.
    """

    def get_nodes(self, addresses: Sequence[Address]) -> Sequence[bytes]: ...


# --- addressing --------------------------------------------------------------------------------

def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two smaller than n (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_addresses(start: int, end: int) -> list[Address]:
    """The complete subtrees, left to right, whose right fold is MTH(D[start:end]).

    Only for the ranges RFC 9162's recursion produces, where ``start`` is a multiple of the
    smallest power of two ≥ end − start; then each block of the binary decomposition of
    end − start is itself aligned.
    """
    out: list[Address] = []
    pos, n = start, end - start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            if pos % (1 << level):
                raise AssertionError(f"unaligned range [{start}, {end})")
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def frontier(size: int) -> list[Address]:
    """The complete subtrees that make up a tree of ``size`` leaves (one per set bit)."""
    return _range_addresses(0, size)


def _fold(hashes: Sequence[bytes]) -> bytes:
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.3.1 PATH(index, D[0:size]) as leaf ranges, leaf side first."""
    path: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
    path.reverse()
    return path


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.4.1 PROOF(old, D[0:new]) = SUBPROOF(old, D[0:new], true) as leaf ranges."""
    out: list[tuple[int, int]] = []
    m, start, end, whole = old_size, 0, new_size, True
    while True:
        if m == end - start:
            if not whole:
                out.append((start, end))
            break
        k = _split(end - start)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            m -= k
            start += k
            whole = False
    out.reverse()
    return out


def _read_ranges(reader: HashReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    groups = [_range_addresses(s, e) for s, e in ranges]
    flat = [a for g in groups for a in g]
    hashes = list(reader.get_nodes(flat)) if flat else []
    if len(hashes) != len(flat):
        raise ProofError(f"tree store returned {len(hashes)} nodes for {len(flat)} addresses")
    out: list[bytes] = []
    pos = 0
    for g in groups:
        out.append(_fold(hashes[pos:pos + len(g)]))
        pos += len(g)
    return out


# --- writing -----------------------------------------------------------------------------------

def append_nodes(reader: HashReader, size: int, leaf_hashes: Iterable[bytes]) -> list[Node]:
    """The nodes to store when ``leaf_hashes`` are appended to a stored tree of ``size`` leaves.

    Reads the frontier of the current tree (popcount(size) nodes) once; returns every new
    complete subtree (each leaf, and each interior node whose last leaf is new) in the order
    they complete, so a store can insert them in the transaction that appends the entries.
    """
    if size < 0:
        raise ProofError(f"tree size must be ≥ 0, got {size}")
    addrs = frontier(size)
    # The frontier as a stack of (level, hash), highest level first: a compact range.
    levels = [level for level, _ in addrs]
    hashes = list(reader.get_nodes(addrs)) if addrs else []
    out: list[Node] = []
    n = size
    for leaf in leaf_hashes:
        if len(leaf) != HASH_SIZE:
            raise ProofError(f"leaf hash {n} is {len(leaf)} bytes, expected {HASH_SIZE}")
        out.append((0, n, leaf))
        n += 1
        # Leaf n−1 completes one subtree per trailing one bit of n−1: merge that many times.
        level, h = 0, leaf
        while levels and levels[-1] == level:
            levels.pop()
            h = node_hash(hashes.pop(), h)
            level += 1
            out.append((level, (n >> level) - 1, h))
        levels.append(level)
        hashes.append(h)
    if n > MAX_TREE_SIZE:
        raise ProofError(f"tree size {n} exceeds {MAX_TREE_SIZE}")
    return out


# --- reading -----------------------------------------------------------------------------------

def _check_size(size: int, what: str = "tree size") -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ProofError(f"{what} {size} outside 0…{MAX_TREE_SIZE}")


def root(reader: HashReader, size: int) -> bytes:
    """MTH(D[0:size]) from popcount(size) stored nodes."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    return _read_ranges(reader, [(0, size)])[0]


def inclusion_proof(reader: HashReader, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    _check_size(size)
    if not 0 <= index < size:
        raise ProofError(f"no leaf {index} in a tree of size {size}")
    return _read_ranges(reader, _inclusion_ranges(index, size))


def consistency_proof(reader: HashReader, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 consistency proof from the tree of ``old_size`` to ``new_size``.

    Empty when old_size is 0 or equals new_size (nothing to prove).
    """
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if old_size > new_size:
        raise ProofError(f"cannot prove size {old_size} consistent with smaller size {new_size}")
    if old_size in (0, new_size):
        return []
    return _read_ranges(reader, _consistency_ranges(old_size, new_size))


class MemoryTree:
    """A :class:`HashReader` that keeps nodes in a dict: tests, and small offline tools."""

    def __init__(self) -> None:
        self._nodes: dict[Address, bytes] = {}
        self.size = 0

    def get_nodes(self, addresses: Sequence[Address]) -> list[bytes]:
        try:
            return [self._nodes[a] for a in addresses]
        except KeyError as e:
            raise ProofError(f"tree store has no node at (level, index) {e.args[0]}") from e

    def put(self, nodes: Iterable[Node]) -> None:
        for level, index, h in nodes:
            self._nodes[(level, index)] = h

    def append(self, leaf_hashes: Iterable[bytes]) -> list[Node]:
        nodes = append_nodes(self, self.size, leaf_hashes)
        self.put(nodes)
        self.size += sum(1 for level, _, _ in nodes if level == 0)
        return nodes

    def __len__(self) -> int:
        """The number of stored nodes."""
        return len(self._nodes)


# --- verification (pure) -----------------------------------------------------------------------

def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        n = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {n}", field=what)


def _check_proof(proof: Sequence[bytes], expected: int, what: str) -> None:
    if len(proof) != expected:
        raise ProofError(f"{what} has {len(proof)} hashes, expected {expected}", field="proof")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root_hash: bytes) -> None:
    """RFC 9162 §2.1.3.2: raise :class:`ProofError` unless ``proof`` shows that the leaf with
    hash ``leaf`` is leaf ``index`` of the tree of ``size`` leaves whose root is ``root_hash``.
    """
    _check_hash(leaf, "leaf hash")
    _check_hash(root_hash, "root")
    _check_size(size)
    # (1) the index must lie in the tree
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}", field="index")
    _check_proof(proof, len(_inclusion_ranges(index, size)),
                 f"inclusion proof for leaf {index} of size {size}")
    # (2) fn = index, sn = size − 1; (3) r = leaf hash
    fn, sn, r = index, size - 1, bytes(leaf)
    # (4) fold the path in
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep", field="proof")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # (5) sn is 0 and r is the root
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep", field="proof")
    if r != root_hash:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root of the "
                         f"tree of size {size}", field="root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise :class:`ProofError` unless ``proof`` shows that the tree of
    ``old_size`` with root ``old_root`` is a prefix of the tree of ``new_size`` with
    ``new_root``. old_size 0 needs an empty proof and the empty root; equal sizes need an
    empty proof and equal roots.
    """
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if old_size > new_size:
        raise ProofError(f"tree shrank from size {old_size} to {new_size}", field="size")
    if old_size == 0:
        _check_proof(proof, 0, "consistency proof from the empty tree")
        if old_root != EMPTY_ROOT:
            raise ProofError("old root of the empty tree is not SHA-256 of the empty string",
                             field="old_root")
        return
    if old_size == new_size:
        _check_proof(proof, 0, f"consistency proof from size {old_size} to itself")
        if old_root != new_root:
            raise ProofError(f"two different roots for size {old_size}", field="new_root")
        return
    # (1) a non-trivial proof is never empty (the exact length check covers it)
    _check_proof(proof, len(_consistency_ranges(old_size, new_size)),
                 f"consistency proof from size {old_size} to {new_size}")
    fr, sr = _consistency_roots(old_size, new_size, old_root, proof)
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})",
                         field="old_root")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})",
                         field="new_root")


def _consistency_roots(old_size: int, new_size: int, old_root: bytes,
                       proof: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Steps (2)–(7) of RFC 9162 §2.1.4.2 for 0 < old_size < new_size: (fr, sr)."""
    path = list(proof)
    # (2) if old_size is a power of two, its root is the proof's implicit first node
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # (3) fn = old − 1, sn = new − 1; (4) drop the levels where fn is a right child
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # (5) fr = sr = first node
    fr = sr = path[0]
    # (6) fold the rest in
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep", field="proof")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # (7) sn is 0 (the caller compares fr and sr with the roots)
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep", field="proof")
    return fr, sr


# --- JSON --------------------------------------------------------------------------------------

def proof_to_b64(proof: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(p).decode("ascii") for p in proof]


def proof_from_b64(value: Any, field: str) -> tuple[bytes, ...]:
    """A JSON list of standard base64 hashes (each 32 bytes), at most MAX_PROOF_HASHES."""
    if not isinstance(value, list):
        raise DecodeError(f"{field}: expected a list of base64 hashes", field=field)
    if len(value) > MAX_PROOF_HASHES:
        raise DecodeError(f"{field}: {len(value)} hashes, at most {MAX_PROOF_HASHES}",
                          field=field)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DecodeError(f"{field}[{i}]: expected a base64 string", field=field)
        out.append(b64decode_strict(item, field=f"{field}[{i}]", length=HASH_SIZE))
    return tuple(out)


_INCLUSION_KEYS = frozenset({"leaf_index", "tree_size", "inclusion_path"})
_CONSISTENCY_KEYS = frozenset({"tree_size_1", "tree_size_2", "consistency_path"})


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """``{"leaf_index":i,"tree_size":n,"inclusion_path":[b64,…]}`` (RFC 9162 field names)."""

    leaf_index: int
    tree_size: int
    inclusion_path: tuple[bytes, ...]

    @classmethod
    def from_dict(cls, d: Any) -> InclusionProof:
        obj = require_object(d, "inclusion proof", _INCLUSION_KEYS)
        return cls(get_int(obj, "leaf_index", minimum=0), get_int(obj, "tree_size", minimum=0),
                   proof_from_b64(obj["inclusion_path"], "inclusion_path"))

    def to_dict(self) -> dict[str, Any]:
        return {"leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "inclusion_path": proof_to_b64(self.inclusion_path)}

    def verify(self, leaf: bytes, root_hash: bytes) -> None:
        verify_inclusion(leaf, self.leaf_index, self.tree_size, self.inclusion_path, root_hash)


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """``{"tree_size_1":m,"tree_size_2":n,"consistency_path":[b64,…]}`` (RFC 9162 names)."""

    tree_size_1: int
    tree_size_2: int
    consistency_path: tuple[bytes, ...]

    @classmethod
    def from_dict(cls, d: Any) -> ConsistencyProof:
        obj = require_object(d, "consistency proof", _CONSISTENCY_KEYS)
        return cls(get_int(obj, "tree_size_1", minimum=0),
                   get_int(obj, "tree_size_2", minimum=0),
                   proof_from_b64(obj["consistency_path"], "consistency_path"))

    def to_dict(self) -> dict[str, Any]:
        return {"tree_size_1": self.tree_size_1, "tree_size_2": self.tree_size_2,
                "consistency_path": proof_to_b64(self.consistency_path)}

    def verify(self, old_root: bytes, new_root: bytes) -> None:
        verify_consistency(self.tree_size_1, self.tree_size_2, old_root, new_root,
                           self.consistency_path)
