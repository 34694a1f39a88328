// Command trailcheck checks the gateway's trail checkpoints and proofs with Go's
// own implementations: golang.org/x/mod/sumdb/note (note.Open, note.NewVerifier)
// and golang.org/x/mod/sumdb/tlog (tlog.CheckRecord, tlog.CheckTree).
//
// It reads one JSON request on stdin (see the request type), verifies every
// checkpoint note and every proof in it, and exits with status 1 and a message
// on stderr at the first failure. On success it prints a JSON report on stdout:
// the parsed checkpoints and, when the request carries the entries, the stored
// hashes and proofs that Go's tlog computes itself, for the caller to compare
// with its own.
//
// Build offline against Debian's golang-golang-x-mod-dev (see go.mod).
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type request struct {
	VerifierKey string             `json:"vkey"`
	Notes       []string           `json:"notes"`       // signed checkpoints
	Inclusion   []inclusionCheck   `json:"inclusion"`   // proofs against Notes[Checkpoint]
	Consistency []consistencyCheck `json:"consistency"` // proofs between Notes[Old] and Notes[New]
	Entries     [][]byte           `json:"entries"`     // optional: the log's entries, in order
	Sign        *signRequest       `json:"sign"`        // optional: sign a text with a private key string
}

type inclusionCheck struct {
	Checkpoint int      `json:"checkpoint"`
	Index      int64    `json:"index"`
	Entry      []byte   `json:"entry"`
	Proof      [][]byte `json:"proof"`
}

type consistencyCheck struct {
	Old   int      `json:"old"`
	New   int      `json:"new"`
	Proof [][]byte `json:"proof"`
}

type signRequest struct {
	PrivateKey string `json:"skey"`
	Text       string `json:"text"`
}

type checkpoint struct {
	Origin string    `json:"origin"`
	Size   int64     `json:"size"`
	Root   tlog.Hash `json:"-"`
	Root64 []byte    `json:"root"`
}

type report struct {
	Checkpoints  []checkpoint `json:"checkpoints"`
	StoredHashes [][]byte     `json:"stored_hashes,omitempty"`
	RecordProofs [][][]byte   `json:"record_proofs,omitempty"`
	TreeProofs   [][][]byte   `json:"tree_proofs,omitempty"`
	Signed       string       `json:"signed,omitempty"`
}

func main() {
	var req request
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail("request: %v", err)
	}
	out, err := run(&req)
	if err != nil {
		fail("%v", err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("output: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "trailcheck: "+format+"\n", args...)
	os.Exit(1)
}

func run(req *request) (*report, error) {
	out := &report{}
	verifier, err := note.NewVerifier(req.VerifierKey)
	if err != nil {
		return nil, fmt.Errorf("verifier key: %w", err)
	}
	for i, msg := range req.Notes {
		n, err := note.Open([]byte(msg), note.VerifierList(verifier))
		if err != nil {
			return nil, fmt.Errorf("note %d: %w", i, err)
		}
		cp, err := parseCheckpoint(n.Text)
		if err != nil {
			return nil, fmt.Errorf("note %d: %w", i, err)
		}
		if cp.Origin != verifier.Name() {
			return nil, fmt.Errorf("note %d: origin %q is not the key name %q", i, cp.Origin, verifier.Name())
		}
		out.Checkpoints = append(out.Checkpoints, cp)
	}
	for i, c := range req.Inclusion {
		cp, err := pick(out.Checkpoints, c.Checkpoint)
		if err != nil {
			return nil, fmt.Errorf("inclusion %d: %w", i, err)
		}
		proof, err := hashes(c.Proof)
		if err != nil {
			return nil, fmt.Errorf("inclusion %d: %w", i, err)
		}
		if err := tlog.CheckRecord(proof, cp.Size, cp.Root, c.Index, tlog.RecordHash(c.Entry)); err != nil {
			return nil, fmt.Errorf("inclusion %d (index %d, size %d): %w", i, c.Index, cp.Size, err)
		}
	}
	for i, c := range req.Consistency {
		old, err := pick(out.Checkpoints, c.Old)
		if err != nil {
			return nil, fmt.Errorf("consistency %d: %w", i, err)
		}
		cur, err := pick(out.Checkpoints, c.New)
		if err != nil {
			return nil, fmt.Errorf("consistency %d: %w", i, err)
		}
		proof, err := hashes(c.Proof)
		if err != nil {
			return nil, fmt.Errorf("consistency %d: %w", i, err)
		}
		if err := tlog.CheckTree(proof, cur.Size, cur.Root, old.Size, old.Root); err != nil {
			return nil, fmt.Errorf("consistency %d (%d to %d): %w", i, old.Size, cur.Size, err)
		}
	}
	if req.Entries != nil {
		if err := recompute(req, out); err != nil {
			return nil, err
		}
	}
	if req.Sign != nil {
		signer, err := note.NewSigner(req.Sign.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("private key: %w", err)
		}
		msg, err := note.Sign(&note.Note{Text: req.Sign.Text}, signer)
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		out.Signed = string(msg)
	}
	return out, nil
}

// recompute builds Go's own stored-hash table from the entries, checks every
// checkpoint root against it, and reports Go's proofs for the requested checks.
func recompute(req *request, out *report) error {
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		list := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("no stored hash %d", x)
			}
			list[i] = stored[x]
		}
		return list, nil
	})
	for i, entry := range req.Entries {
		hs, err := tlog.StoredHashes(int64(i), entry, reader)
		if err != nil {
			return fmt.Errorf("stored hashes for record %d: %w", i, err)
		}
		stored = append(stored, hs...)
	}
	for _, h := range stored {
		out.StoredHashes = append(out.StoredHashes, append([]byte(nil), h[:]...))
	}
	for i, cp := range out.Checkpoints {
		root, err := tlog.TreeHash(cp.Size, reader)
		if err != nil {
			return fmt.Errorf("tree hash for note %d: %w", i, err)
		}
		if root != cp.Root {
			return fmt.Errorf("note %d: root differs from the entries' tree hash", i)
		}
	}
	for _, c := range req.Inclusion {
		p, err := tlog.ProveRecord(out.Checkpoints[c.Checkpoint].Size, c.Index, reader)
		if err != nil {
			return fmt.Errorf("prove record %d: %w", c.Index, err)
		}
		out.RecordProofs = append(out.RecordProofs, flatten(p))
	}
	for _, c := range req.Consistency {
		p, err := tlog.ProveTree(out.Checkpoints[c.New].Size, out.Checkpoints[c.Old].Size, reader)
		if err != nil {
			return fmt.Errorf("prove tree: %w", err)
		}
		out.TreeProofs = append(out.TreeProofs, flatten(p))
	}
	return nil
}

// parseCheckpoint reads the c2sp.org/tlog-checkpoint text: origin, size, root.
func parseCheckpoint(text string) (checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[0] == "" {
		return checkpoint{}, errors.New("malformed checkpoint")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 1 || strconv.FormatInt(size, 10) != lines[1] {
		return checkpoint{}, errors.New("malformed checkpoint size")
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return checkpoint{}, errors.New("malformed checkpoint root")
	}
	cp := checkpoint{Origin: lines[0], Size: size, Root64: root}
	copy(cp.Root[:], root)
	return cp, nil
}

func pick(cps []checkpoint, i int) (checkpoint, error) {
	if i < 0 || i >= len(cps) {
		return checkpoint{}, fmt.Errorf("no checkpoint %d", i)
	}
	return cps[i], nil
}

func hashes(raw [][]byte) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(raw))
	for i, h := range raw {
		if len(h) != tlog.HashSize {
			return nil, fmt.Errorf("proof hash %d is %d bytes", i, len(h))
		}
		copy(out[i][:], h)
	}
	return out, nil
}

func flatten(p []tlog.Hash) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = append([]byte(nil), p[i][:]...)
	}
	return out
}
