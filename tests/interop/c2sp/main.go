// Command c2sp is a third-party check of timeclock's checkpoints, cosigned notes and Merkle
// proofs: it uses golang.org/x/mod/sumdb/note (C2SP signed notes) and
// golang.org/x/mod/sumdb/tlog (RFC 6962/9162 trees and proofs), the Go module mirror's own
// implementation, from Debian's golang-golang-x-mod-dev. tests/interop/test_c2sp_go.py builds
// and runs it; see docs/protocol.md §13.
//
//	c2sp check < request.json   verify notes and proofs; recompute the tree from the leaves
//	c2sp sign NAME < body       sign a note body with a new Ed25519 key named NAME
//
// Both print one JSON object on stdout; check exits 1 when anything fails.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index int64    `json:"index"`
	Size  int64    `json:"size"`
	Proof []string `json:"proof"`
}

type consistency struct {
	Old   int64    `json:"old"`
	New   int64    `json:"new"`
	Proof []string `json:"proof"`
}

type request struct {
	VKey        string        `json:"vkey"`
	Notes       []string      `json:"notes"`
	Leaves      []string      `json:"leaves"` // base64 leaf data (domain + canonical entry)
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

type report struct {
	Notes       int      `json:"notes"`
	Inclusion   int      `json:"inclusion"`
	Consistency int      `json:"consistency"`
	Roots       []string `json:"roots"` // base64 root of each size 0..len(leaves)
	Errors      []string `json:"errors"`
}

// memory is a tlog.HashReader over the stored hashes kept in a slice.
type memory []tlog.Hash

func (m memory) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(m)) {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = m[x]
	}
	return out, nil
}

func hashes(b64 []string) (tlog.RecordProof, error) {
	out := make(tlog.RecordProof, len(b64))
	for i, s := range b64 {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != tlog.HashSize {
			return nil, fmt.Errorf("proof hash %d is not 32 bytes of base64", i)
		}
		copy(out[i][:], b)
	}
	return out, nil
}

func check(in io.Reader) int {
	var req request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "c2sp: bad request:", err)
		return 2
	}
	rep := report{Errors: []string{}}
	fail := func(format string, args ...any) { rep.Errors = append(rep.Errors, fmt.Sprintf(format, args...)) }

	// The tree, from the leaf data alone.
	var stored memory
	leafHashes := make([]tlog.Hash, len(req.Leaves))
	for i, s := range req.Leaves {
		data, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			fail("leaf %d: %v", i, err)
			continue
		}
		leafHashes[i] = tlog.RecordHash(data)
		more, err := tlog.StoredHashes(int64(i), data, stored)
		if err != nil {
			fail("leaf %d: %v", i, err)
			continue
		}
		stored = append(stored, more...)
	}
	root := func(n int64) (tlog.Hash, error) { return tlog.TreeHash(n, stored) }
	for n := int64(0); n <= int64(len(req.Leaves)); n++ {
		h, err := root(n)
		if err != nil {
			fail("root %d: %v", n, err)
			break
		}
		rep.Roots = append(rep.Roots, base64.StdEncoding.EncodeToString(h[:]))
	}

	// Checkpoints: open each note with the log's key; its root must be the tree's.
	v, err := note.NewVerifier(req.VKey)
	if err != nil {
		fail("log vkey: %v", err)
	}
	for k, text := range req.Notes {
		if v == nil {
			break
		}
		n, err := note.Open([]byte(text), note.VerifierList(v))
		if err != nil {
			fail("note %d: %v", k, err)
			continue
		}
		lines := strings.Split(n.Text, "\n")
		if len(lines) != 4 || lines[3] != "" || lines[0] != v.Name() {
			fail("note %d: not a checkpoint body of origin %q: %q", k, v.Name(), n.Text)
			continue
		}
		size, err := strconv.ParseInt(lines[1], 10, 64)
		if err != nil || size < 0 || size > int64(len(req.Leaves)) {
			fail("note %d: size %q", k, lines[1])
			continue
		}
		want, err := root(size)
		if err != nil || base64.StdEncoding.EncodeToString(want[:]) != lines[2] {
			fail("note %d: root %s is not the tree's at size %d", k, lines[2], size)
			continue
		}
		rep.Notes++
	}

	for _, p := range req.Inclusion {
		proof, err := hashes(p.Proof)
		if err != nil || p.Index < 0 || p.Index >= p.Size || p.Size > int64(len(req.Leaves)) {
			fail("inclusion %d in %d: bad request (%v)", p.Index, p.Size, err)
			continue
		}
		th, _ := root(p.Size)
		if err := tlog.CheckRecord(proof, p.Size, th, p.Index, leafHashes[p.Index]); err != nil {
			fail("inclusion %d in %d: %v", p.Index, p.Size, err)
			continue
		}
		own, err := tlog.ProveRecord(p.Size, p.Index, stored)
		if err != nil || !equal(own, proof) {
			fail("inclusion %d in %d: not the proof tlog makes (%v)", p.Index, p.Size, err)
			continue
		}
		rep.Inclusion++
	}
	for _, p := range req.Consistency {
		proof, err := hashes(p.Proof)
		if err != nil || p.Old < 1 || p.Old > p.New || p.New > int64(len(req.Leaves)) {
			fail("consistency %d to %d: bad request (%v)", p.Old, p.New, err)
			continue
		}
		oldRoot, _ := root(p.Old)
		newRoot, _ := root(p.New)
		if err := tlog.CheckTree(tlog.TreeProof(proof), p.New, newRoot, p.Old, oldRoot); err != nil {
			fail("consistency %d to %d: %v", p.Old, p.New, err)
			continue
		}
		own, err := tlog.ProveTree(p.New, p.Old, stored)
		if err != nil || !equal(tlog.RecordProof(own), proof) {
			fail("consistency %d to %d: not the proof tlog makes (%v)", p.Old, p.New, err)
			continue
		}
		rep.Consistency++
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
	if len(rep.Errors) > 0 {
		return 1
	}
	return 0
}

func equal(a, b []tlog.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sign(name string, in io.Reader) int {
	body, err := io.ReadAll(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "c2sp:", err)
		return 2
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "c2sp:", err)
		return 2
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		fmt.Fprintln(os.Stderr, "c2sp:", err)
		return 2
	}
	msg, err := note.Sign(&note.Note{Text: string(body)}, signer)
	if err != nil {
		fmt.Fprintln(os.Stderr, "c2sp:", err)
		return 2
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"vkey": vkey, "note": string(msg)})
	return 0
}

func main() {
	switch {
	case len(os.Args) == 2 && os.Args[1] == "check":
		os.Exit(check(os.Stdin))
	case len(os.Args) == 3 && os.Args[1] == "sign":
		os.Exit(sign(os.Args[2], os.Stdin))
	default:
		fmt.Fprintln(os.Stderr, "usage: c2sp check < request.json | c2sp sign NAME < body")
		os.Exit(2)
	}
}
