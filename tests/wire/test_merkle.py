"""DESIGN.md §8.1: the ledger's Merkle tree (RFC 9162 §2.1), its storage and its proofs.

The 8-leaf known-answer vectors are the Certificate Transparency reference vectors as carried
by transparency-dev/merkle (testonly/constants.go: LeafInputs, NodeHashes, RootHashes;
proof/verify_test.go: inclusionProofs, consistencyProofs), themselves from the original CT
C++/Go implementations' unit tests. Everything else is checked against the naive recursive
definition of RFC 9162 §2.1.1–2.1.4 written out below.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from wire.errors import DecodeError, ProofError, WireError
from wire.ledger import Entry
from wire.merkle import (
    EMPTY_ROOT,
    Address,
    ConsistencyProof,
    InclusionProof,
    MemoryTree,
    Node,
    append_nodes,
    consistency_proof,
    entry_leaf_data,
    entry_leaf_hash,
    frontier,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# --- CT / RFC 6962 reference vectors (transparency-dev/merkle testonly + proof tests) ----------

LEAVES = [h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                         "606162636465666768696a6b6c6d6e6f")]
ROOTS = [h(x) for x in (  # index = tree size
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# NodeHashes(): [level][index] of every complete subtree of the 8-leaf tree.
NODES = [
    [h(x) for x in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1")],
    [h(x) for x in (
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0")],
    [h(x) for x in (
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]
# (leaf index, tree size, proof); the Go table counts leaves from 1, these from 0.
INCLUSION_VECTORS = [
    (0, 1, []),
    (0, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (1, 5, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]
# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]


def gen_leaf(i: int) -> bytes:
    """A distinct leaf hash per index."""
    return leaf_hash(i.to_bytes(8, "big"))


def big_leaf(i: int) -> bytes:
    """A cheaper distinct 32-byte leaf hash for the large tree (the tree hashes it as given)."""
    return i.to_bytes(32, "big")


# --- the naive reference: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 verbatim, over leaf hashes ------

class Reference:
    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = list(leaves)
        self.mth = lru_cache(maxsize=None)(self._mth)

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return self.leaves[start]
        k = 1
        while k * 2 < n:
            k *= 2
        return hashlib.sha256(b"\x01" + self.mth(start, start + k)
                              + self.mth(start + k, end)).digest()

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = 1
        while k * 2 < n:
            k *= 2
        if m < k:
            return self.path(m, start, start + k) + [self.mth(start + k, end)]
        return self.path(m - k, start + k, end) + [self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [self.mth(start, end)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return self.subproof(m, start, start + k, whole) + [self.mth(start + k, end)]
        return self.subproof(m - k, start + k, end, False) + [self.mth(start, start + k)]


def memory_tree(leaves: Sequence[bytes]) -> MemoryTree:
    t = MemoryTree()
    t.append(leaves)
    return t


@pytest.fixture(scope="module")
def ref_leaves() -> list[bytes]:
    return [gen_leaf(i) for i in range(128)]


@pytest.fixture(scope="module")
def ref(ref_leaves: list[bytes]) -> Reference:
    return Reference(ref_leaves)


@pytest.fixture(scope="module")
def tree128(ref_leaves: list[bytes]) -> MemoryTree:
    return memory_tree(ref_leaves)


# --- hashes and leaf data ----------------------------------------------------------------------

def test_hash_definitions() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert root(MemoryTree(), 0) == EMPTY_ROOT


def test_leaf_data_is_the_entry_hash_preimage() -> None:
    """Leaf data = b"timeclock/ledger/v1\\n" + canonical(entry): SHA-256 of it is the §6 hash."""
    vectors = json.loads((Path(__file__).parent.parent / "vectors" / "punch-v1.json").read_text())
    for row in vectors["ledger"]:
        entry = Entry.from_dict(row["entry"])
        data = entry_leaf_data(entry)
        assert data == b"timeclock/ledger/v1\n" + row["canonical"].encode()
        assert hashlib.sha256(data).hexdigest() == row["entry_hash"] == entry.hash()
        assert entry_leaf_hash(entry) == hashlib.sha256(b"\x00" + data).digest()


# --- the CT reference vectors ------------------------------------------------------------------

@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    assert root(memory_tree([leaf_hash(x) for x in LEAVES]), size) == ROOTS[size]
    assert root(memory_tree([leaf_hash(x) for x in LEAVES[:size]]), size) == ROOTS[size]


def test_stored_nodes_are_the_reference_complete_subtrees() -> None:
    """Node (level, index) is the hash of leaves index·2^level … (index+1)·2^level − 1."""
    nodes = append_nodes(MemoryTree(), 0, [leaf_hash(x) for x in LEAVES])
    got = {(level, index): digest for level, index, digest in nodes}
    want = {(level, i): d for level, row in enumerate(NODES) for i, d in enumerate(row)}
    assert got == want
    assert len(nodes) == len(want) == 15


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_reference_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    tree = memory_tree([leaf_hash(x) for x in LEAVES])
    assert inclusion_proof(tree, index, size) == proof
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_reference_consistency_proofs(old: int, new: int, proof: list[bytes]) -> None:
    tree = memory_tree([leaf_hash(x) for x in LEAVES])
    assert consistency_proof(tree, old, new) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


# --- every proof up to 64 leaves against the naive reference -----------------------------------

def test_roots_match_reference_up_to_128(tree128: MemoryTree, ref: Reference) -> None:
    for size in range(129):
        assert root(tree128, size) == ref.mth(0, size), size


def test_every_inclusion_proof_up_to_64(tree128: MemoryTree, ref: Reference) -> None:
    checked = 0
    for size in range(1, 65):
        r = ref.mth(0, size)
        for index in range(size):
            proof = inclusion_proof(tree128, index, size)
            assert proof == ref.path(index, 0, size), (index, size)
            verify_inclusion(ref.leaves[index], index, size, proof, r)
            checked += 1
    assert checked == 64 * 65 // 2


def test_every_consistency_proof_up_to_64(tree128: MemoryTree, ref: Reference) -> None:
    checked = 0
    for new in range(65):
        for old in range(new + 1):
            proof = consistency_proof(tree128, old, new)
            want = [] if old in (0, new) else ref.subproof(old, 0, new, True)
            assert proof == want, (old, new)
            verify_consistency(old, new, ref.mth(0, old), ref.mth(0, new), proof)
            checked += 1
    assert checked == 65 * 66 // 2


# --- storage: appending and reading ------------------------------------------------------------

@pytest.mark.parametrize("chunks", [[1] * 40, [40], [3, 5, 7, 1, 16, 8], [31, 1, 1, 7], [2, 38]])
def test_append_in_chunks_stores_the_same_nodes(chunks: list[int],
                                                ref_leaves: list[bytes]) -> None:
    whole = memory_tree(ref_leaves[:40])
    parts = MemoryTree()
    n = 0
    for c in chunks:
        nodes = parts.append(ref_leaves[n:n + c])
        # only complete subtrees whose last leaf is new are written, each once
        for level, index, _ in nodes:
            assert n <= (index + 1) * (1 << level) - 1 < n + c
        n += c
    assert parts.size == whole.size == 40
    assert parts.get_nodes(_all_addresses(40)) == whole.get_nodes(_all_addresses(40))
    assert len(parts) == len(whole) == 2 * 40 - bin(40).count("1")


def _all_addresses(size: int) -> list[Address]:
    return [(level, i) for level in range(size.bit_length()) for i in range(size >> level)]


class CountingReader:
    def __init__(self, inner: MemoryTree) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def get_nodes(self, addresses: Sequence[Address]) -> list[bytes]:
        self.calls.append(len(addresses))
        return self.inner.get_nodes(addresses)


def test_roots_and_proofs_read_few_nodes_in_one_call(tree128: MemoryTree) -> None:
    for size in (1, 2, 3, 63, 64, 65, 100, 127, 128):
        log = size.bit_length()
        reader = CountingReader(tree128)
        root(reader, size)
        assert reader.calls == [bin(size).count("1")]
        for index in (0, size // 2, size - 1):
            reader = CountingReader(tree128)
            inclusion_proof(reader, index, size)
            assert len(reader.calls) <= 1
            assert sum(reader.calls) <= 2 * log
        for old in range(1, size):
            reader = CountingReader(tree128)
            consistency_proof(reader, old, size)
            assert len(reader.calls) == 1
            assert reader.calls[0] <= 3 * log


def test_append_reads_only_the_frontier(tree128: MemoryTree) -> None:
    reader = CountingReader(tree128)
    append_nodes(reader, 100, [gen_leaf(100)])
    assert reader.calls == [3]   # 100 = 64 + 32 + 4
    assert frontier(100) == [(6, 0), (5, 2), (2, 24)]


def test_a_missing_node_is_reported() -> None:
    tree = memory_tree([gen_leaf(i) for i in range(8)])
    with pytest.raises(ProofError, match=r"no node at \(level, index\) \(2, 2\)"):
        root(tree, 12)
    with pytest.raises(ProofError, match=r"no leaf 8 in a tree of size 8"):
        inclusion_proof(tree, 8, 8)
    with pytest.raises(ProofError, match=r"cannot prove size 5 consistent with smaller size 4"):
        consistency_proof(tree, 5, 4)
    with pytest.raises(ProofError, match=r"leaf hash 8 is 31 bytes"):
        tree.append([b"x" * 31])
    assert tree.size == 8


# --- a large tree: 1,000,000 leaves ------------------------------------------------------------

N_LARGE = 1_000_000
TAIL = 40_000


class LevelArrays:
    """A test store: one bytearray per level, appended in index order (a SQL table's shape)."""

    def __init__(self) -> None:
        self.levels: list[bytearray] = []

    def get_nodes(self, addresses: Sequence[Address]) -> list[bytes]:
        out = []
        for level, index in addresses:
            if level >= len(self.levels) or (index + 1) * 32 > len(self.levels[level]):
                raise ProofError(f"no node {(level, index)}")
            out.append(bytes(self.levels[level][index * 32:(index + 1) * 32]))
        return out

    def put(self, nodes: Sequence[Node]) -> None:
        for level, index, digest in nodes:
            while len(self.levels) <= level:
                self.levels.append(bytearray())
            assert len(self.levels[level]) == index * 32, "nodes arrive in index order"
            self.levels[level] += digest


@pytest.fixture(scope="module")
def large() -> tuple[LevelArrays, bytes]:
    """1M leaves built level by level (about 2 s of CPU here): the complete subtrees go to the
    store, and the bottom-up root (an odd last node carried up a level) is the independent
    reference. The last TAIL leaves are then cut off and re-appended through append_nodes."""
    sha = hashlib.sha256
    level = [i.to_bytes(32, "big") for i in range(N_LARGE)]
    full = LevelArrays()
    depth = 0
    while len(level) > 1:
        # only the first N >> depth nodes of a level are complete subtrees
        full.levels.append(bytearray(b"".join(level[:N_LARGE >> depth])))
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        depth += 1
    reference_root = level[0]
    store = LevelArrays()
    prefix = N_LARGE - TAIL
    store.levels = [bytearray(lv[:(prefix >> i) * 32]) for i, lv in enumerate(full.levels)]
    store.put(append_nodes(store, prefix, [big_leaf(i) for i in range(prefix, N_LARGE)]))
    assert len(store.levels) == len(full.levels)
    for i, lv in enumerate(full.levels):
        assert store.levels[i] == lv, f"level {i} differs"
    return store, reference_root


def test_large_tree_root_and_random_proofs(large: tuple[LevelArrays, bytes]) -> None:
    store, reference_root = large
    assert root(store, N_LARGE) == reference_root
    rng = random.Random(9162)  # noqa: S311 - reproducible sample, not crypto
    sizes = [rng.randrange(1, N_LARGE) for _ in range(6)] + [1, 2**19, 2**19 + 1, N_LARGE - 1]
    for size in sizes:
        size_root = root(store, size)
        # the root of a prefix is the genuine one: it is provably consistent with the full root
        proof = consistency_proof(store, size, N_LARGE)
        verify_consistency(size, N_LARGE, size_root, reference_root, proof)
        assert len(proof) <= 2 * N_LARGE.bit_length()
        for index in (0, size - 1, rng.randrange(size)):
            path = inclusion_proof(store, index, size)
            verify_inclusion(big_leaf(index), index, size, path, size_root)
            assert len(path) <= size.bit_length()
        other = rng.randrange(1, size + 1)
        verify_consistency(other, size, root(store, other), size_root,
                           consistency_proof(store, other, size))


# --- tampering ---------------------------------------------------------------------------------

def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS[1:])
def test_every_bit_flip_of_a_reference_inclusion_proof_fails(
        index: int, size: int, proof: list[bytes]) -> None:
    leaf = leaf_hash(LEAVES[index])
    for i in range(len(proof)):
        for bit in range(256):
            bad = [*proof[:i], _flip(proof[i], bit), *proof[i + 1:]]
            with pytest.raises(ProofError, match="does not lead to the root"):
                verify_inclusion(leaf, index, size, bad, ROOTS[size])
    for bit in range(256):
        with pytest.raises(ProofError, match="does not lead to the root"):
            verify_inclusion(leaf, index, size, proof, _flip(ROOTS[size], bit))
        with pytest.raises(ProofError, match="does not lead to the root"):
            verify_inclusion(_flip(leaf, bit), index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS[1:])
def test_every_bit_flip_of_a_reference_consistency_proof_fails(
        old: int, new: int, proof: list[bytes]) -> None:
    for i in range(len(proof)):
        for bit in range(256):
            bad = [*proof[:i], _flip(proof[i], bit), *proof[i + 1:]]
            with pytest.raises(ProofError, match="does not lead to the (old|new) root"):
                verify_consistency(old, new, ROOTS[old], ROOTS[new], bad)
    for bit in range(256):
        # (an old size that is a power of two enters the proof as its first node, so a wrong
        # old root then shows as a wrong new root)
        with pytest.raises(ProofError, match="does not lead to the (old|new) root"):
            verify_consistency(old, new, _flip(ROOTS[old], bit), ROOTS[new], proof)
        with pytest.raises(ProofError, match="does not lead to the new root"):
            verify_consistency(old, new, ROOTS[old], _flip(ROOTS[new], bit), proof)


def test_flipped_index_or_size_fails_up_to_64(tree128: MemoryTree, ref: Reference) -> None:
    """An inclusion proof proves (index, size, root) together: change the index, or change the
    size and use that size's genuine root, and it fails. (With the *old* root a proof may
    still fold to it under another size: RFC 9162 proofs do not commit to the size, which is
    why size and root are only ever taken together from one signed checkpoint.)"""
    rng = random.Random(64)  # noqa: S311 - reproducible sample, not crypto
    for size in range(1, 65):
        for index in range(size):
            proof = inclusion_proof(tree128, index, size)
            leaf = ref.leaves[index]
            for bit in range(7):
                bad_index = index ^ (1 << bit)
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, bad_index, size, proof, ref.mth(0, size))
                bad_size = size ^ (1 << bit)
                if bad_size > index:
                    with pytest.raises(ProofError):
                        verify_inclusion(leaf, index, bad_size, proof, ref.mth(0, bad_size))
            if proof:
                i = rng.randrange(len(proof))
                bad = [*proof[:i], _flip(proof[i], rng.randrange(256)), *proof[i + 1:]]
                with pytest.raises(ProofError, match="does not lead to the root"):
                    verify_inclusion(leaf, index, size, bad, ref.mth(0, size))


def test_flipped_sizes_fail_consistency_up_to_64(tree128: MemoryTree, ref: Reference) -> None:
    rng = random.Random(65)  # noqa: S311 - reproducible sample, not crypto
    for new in range(2, 65):
        for old in range(1, new):
            proof = consistency_proof(tree128, old, new)
            for bit in range(7):
                o, n = old ^ (1 << bit), new ^ (1 << bit)
                if 0 < o <= new and o != old:
                    with pytest.raises(ProofError):
                        verify_consistency(o, new, ref.mth(0, o), ref.mth(0, new), proof)
                if old <= n <= 127 and n != new:
                    with pytest.raises(ProofError):
                        verify_consistency(old, n, ref.mth(0, old), ref.mth(0, n), proof)
            i = rng.randrange(len(proof))
            bad = [*proof[:i], _flip(proof[i], rng.randrange(256)), *proof[i + 1:]]
            with pytest.raises(ProofError, match="does not lead to the (old|new) root"):
                verify_consistency(old, new, ref.mth(0, old), ref.mth(0, new), bad)


# --- wrong shapes ------------------------------------------------------------------------------

SOME = h("abacaba000000000000000000000000000000000000000000060061e00123456")
P = INCLUSION_VECTORS[2][2]    # leaf 5 of 8
C = CONSISTENCY_VECTORS[2][2]  # 6 → 8

INCLUSION_REFUSALS: list[tuple[str, tuple[Any, ...], str]] = [
    ("trailing hash", (5, 8, [*P, ROOTS[8]]), r"has 4 hashes, expected 3"),
    ("missing hash", (5, 8, P[:2]), r"has 2 hashes, expected 3"),
    ("leading hash", (5, 8, [SOME, *P]), r"has 4 hashes, expected 3"),
    ("empty proof", (5, 8, []), r"has 0 hashes, expected 3"),
    ("short element", (5, 8, [P[0], P[1][:31], P[2]]), r"proof\[1\] must be 32 bytes, got 31"),
    ("long element", (5, 8, [P[0], P[1], P[2] + b"\0"]), r"proof\[2\] must be 32 bytes, got 33"),
    ("index = size", (8, 8, P), r"leaf index 8 is not below tree size 8"),
    ("empty tree", (0, 0, []), r"leaf index 0 is not below tree size 0"),
    ("negative index", (-1, 8, P), r"leaf index -1 is not below"),
    ("huge size", (5, 2**53, P), r"tree size 9007199254740992 outside"),
]


@pytest.mark.parametrize(("case", "args", "message"), INCLUSION_REFUSALS,
                         ids=[c[0] for c in INCLUSION_REFUSALS])
def test_inclusion_refusals(case: str, args: tuple[Any, ...], message: str) -> None:
    index, size, proof = args
    with pytest.raises(ProofError, match=message):
        verify_inclusion(leaf_hash(LEAVES[5]), index, size, proof, ROOTS[8])


def test_inclusion_refuses_malformed_hashes() -> None:
    with pytest.raises(ProofError, match=r"leaf hash must be 32 bytes, got 9"):
        verify_inclusion(b"WrongLeaf", 5, 8, P, ROOTS[8])
    with pytest.raises(ProofError, match=r"root must be 32 bytes, got 0"):
        verify_inclusion(leaf_hash(LEAVES[5]), 5, 8, P, b"")
    with pytest.raises(ProofError, match="does not lead to the root"):
        verify_inclusion(leaf_hash(LEAVES[5]), 5, 8, P, EMPTY_ROOT)


CONSISTENCY_REFUSALS: list[tuple[str, tuple[Any, ...], str]] = [
    ("trailing hash", (6, 8, ROOTS[6], ROOTS[8], [*C, ROOTS[8]]), r"has 4 hashes, expected 3"),
    ("truncated", (6, 8, ROOTS[6], ROOTS[8], C[:2]), r"has 2 hashes, expected 3"),
    ("preceding old root", (6, 8, ROOTS[6], ROOTS[8], [ROOTS[6], *C]), r"has 4 hashes"),
    ("empty proof", (6, 8, ROOTS[6], ROOTS[8], []), r"has 0 hashes, expected 3"),
    ("short element", (6, 8, ROOTS[6], ROOTS[8], [C[0][:1], C[1], C[2]]),
     r"proof\[0\] must be 32 bytes, got 1"),
    ("swapped roots", (6, 8, ROOTS[8], ROOTS[6], C), r"does not lead to the old root"),
    ("shrinking", (8, 6, ROOTS[8], ROOTS[6], C), r"tree shrank from size 8 to 6"),
    ("same size, two roots", (4, 4, ROOTS[4], ROOTS[5], []), r"two different roots for size 4"),
    ("same size, a proof", (4, 4, ROOTS[4], ROOTS[4], [EMPTY_ROOT]), r"has 1 hashes, expected 0"),
    ("from empty, a proof", (0, 4, EMPTY_ROOT, ROOTS[4], [EMPTY_ROOT]), r"has 1 hashes"),
    ("from empty, not the empty root", (0, 4, ROOTS[1], ROOTS[4], []),
     r"old root of the empty tree is not SHA-256 of the empty string"),
    ("bad old root length", (6, 8, b"WrongRoot", ROOTS[8], C), r"old root must be 32 bytes"),
]


@pytest.mark.parametrize(("case", "args", "message"), CONSISTENCY_REFUSALS,
                         ids=[c[0] for c in CONSISTENCY_REFUSALS])
def test_consistency_refusals(case: str, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ProofError, match=message):
        verify_consistency(*args)


def test_trivially_consistent_sizes_verify() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])


def test_proof_errors_are_wire_errors() -> None:
    with pytest.raises(WireError) as info:
        verify_inclusion(leaf_hash(LEAVES[5]), 5, 8, P, EMPTY_ROOT)
    assert info.value.reason == "bad-proof"
    assert info.value.field == "root"


# --- JSON --------------------------------------------------------------------------------------

def test_proof_json_round_trip() -> None:
    inc = InclusionProof(5, 8, tuple(P))
    d = inc.to_dict()
    assert d == {"leaf_index": 5, "tree_size": 8, "inclusion_path": [
        "vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms=",
        "yoVOoSjtBQtBs1/8G4e46yveRh6eO1WW7Oa51ZdaCuA=",
        "037kGJdt2VdTwcc4Yrk5j6Kiz5tP8P3+izDNlSCWFLc="]}
    assert InclusionProof.from_dict(json.loads(json.dumps(d))) == inc
    inc.verify(leaf_hash(LEAVES[5]), ROOTS[8])
    con = ConsistencyProof(6, 8, tuple(C))
    d = con.to_dict()
    assert set(d) == {"tree_size_1", "tree_size_2", "consistency_path"}
    assert ConsistencyProof.from_dict(json.loads(json.dumps(d))) == con
    con.verify(ROOTS[6], ROOTS[8])
    with pytest.raises(ProofError):
        con.verify(ROOTS[5], ROOTS[8])


JSON_REFUSALS: list[tuple[str, Any, str]] = [
    ("unknown field", {"leaf_index": 0, "tree_size": 1, "inclusion_path": [], "x": 1},
     r"unknown field\(s\) x"),
    ("missing field", {"leaf_index": 0, "tree_size": 1}, r"missing field\(s\) inclusion_path"),
    ("not a list", {"leaf_index": 0, "tree_size": 1, "inclusion_path": "AAAA"},
     r"inclusion_path: expected a list"),
    ("not a string", {"leaf_index": 0, "tree_size": 1, "inclusion_path": [1]},
     r"inclusion_path\[0\]: expected a base64 string"),
    ("31 bytes", {"leaf_index": 0, "tree_size": 1, "inclusion_path": ["A" * 42 + "=="]},
     r"inclusion_path\[0\]: expected 32 bytes, got 31"),
    ("url alphabet", {"leaf_index": 0, "tree_size": 1,
                      "inclusion_path": ["-" + "A" * 42 + "="]}, r"not standard base64"),
    ("non-canonical padding bits", {"leaf_index": 0, "tree_size": 1,
                                    "inclusion_path": ["A" * 42 + "B="]}, r"not in canonical"),
    ("too many", {"leaf_index": 0, "tree_size": 1, "inclusion_path": ["A" * 43 + "="] * 129},
     r"129 hashes, at most 128"),
    ("negative index", {"leaf_index": -1, "tree_size": 1, "inclusion_path": []},
     r"leaf_index: must be ≥ 0"),
    ("bool size", {"leaf_index": 0, "tree_size": True, "inclusion_path": []},
     r"tree_size: expected an integer"),
]


@pytest.mark.parametrize(("case", "value", "message"), JSON_REFUSALS,
                         ids=[c[0] for c in JSON_REFUSALS])
def test_proof_json_refusals(case: str, value: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        InclusionProof.from_dict(value)
