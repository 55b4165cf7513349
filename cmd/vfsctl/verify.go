package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// verify runs in three steps: planVerify, a pure function of the
// manifest, lists the objects that hold its distinct stored chunks;
// checkTargets fetches each from each target; verifyReport, pure again,
// classifies what each target said of each chunk and sums it up.

// verifyTargetJSON is one target's result in vfsctl verify --json.
type verifyTargetJSON struct {
	Target  string   `json:"target"`
	OK      int      `json:"ok"`
	Missing []string `json:"missing"`
	Corrupt []string `json:"corrupt"`
	Errors  []string `json:"errors"`
}

// verifyJSON is vfsctl verify --json. OK, Missing, Corrupt and Errors sum
// up Targets: OK counts the distinct chunks intact in every target,
// Missing and Corrupt list the chunks missing or corrupt in any, and
// Errors each target's errors prefixed with its name.
type verifyJSON struct {
	Source  string             `json:"source"`
	Chunks  int                `json:"chunks"`
	Unique  int                `json:"unique_chunks"`
	Packs   int                `json:"packs"`
	Base    string             `json:"base,omitempty"` // a format v2 manifest's base
	OK      int                `json:"ok"`
	Missing []string           `json:"missing"`
	Corrupt []string           `json:"corrupt"`
	Errors  []string           `json:"errors"`
	Targets []verifyTargetJSON `json:"targets"`
}

func (t *verifyTargetJSON) bad() int { return len(t.Missing) + len(t.Corrupt) + len(t.Errors) }

// verifyObject is one object verify fetches from each target: a chunk's
// own object, or a pack, fetched once for all the members it checks.
type verifyObject struct {
	pack    bool
	id      manifest.Fingerprint // the chunk's, or the pack's
	members []verifyMember
}

// verifyMember is a chunk verify checks, and where it is in its pack.
type verifyMember struct {
	fp  manifest.Fingerprint
	ref manifest.PackRef // in a pack only
}

// verifyPlan is what verify checks of a manifest.
type verifyPlan struct {
	chunks, packs int // the manifest's chunks and packs
	unique        int // the distinct places its chunks stored outside it are read from
	objects       []verifyObject
}

// place is where a restore reads a chunk: its own object (a zero ref),
// or a member of a pack.
type place struct {
	fp  manifest.Fingerprint
	ref manifest.PackRef
}

func (m verifyMember) place() place { return place{m.fp, m.ref} }

// planVerify lists, in the manifest's order, the objects holding m's
// chunks: each place a chunk that is not inline is read from, the first
// time it appears, in its own object or grouped with the other members
// of its pack. Places, not fingerprints: a manifest may put one
// fingerprint in two places, and a restore reads both.
func planVerify(m *manifest.Manifest) verifyPlan {
	p := verifyPlan{chunks: len(m.Chunks), packs: len(m.Packs)}
	refs := m.PackRefs()
	seen := map[place]bool{}
	byPack := map[manifest.Fingerprint]int{} // pack ID to its index in p.objects
	for i, fp := range m.Chunks {
		if _, inline := m.Inline[uint32(i)]; inline {
			continue
		}
		ref, packed := refs[uint32(i)]
		if seen[place{fp, ref}] {
			continue
		}
		seen[place{fp, ref}] = true
		p.unique++
		if !packed {
			p.objects = append(p.objects, verifyObject{id: fp, members: []verifyMember{{fp: fp}}})
			continue
		}
		k, ok := byPack[ref.ID]
		if !ok {
			k = len(p.objects)
			byPack[ref.ID] = k
			p.objects = append(p.objects, verifyObject{pack: true, id: ref.ID})
		}
		p.objects[k].members = append(p.objects[k].members, verifyMember{fp, ref})
	}
	return p
}

// verifyResult is what a target said of a chunk (err nil: intact), or of
// a whole pack it could not read (pack set).
type verifyResult struct {
	target int
	at     place
	pack   *verifyObject
	err    error
}

// checkTargets fetches every object of p from every target, 16 at a time,
// and returns what each said, in the plan's order, target by target.
func checkTargets(ctx context.Context, targets []store.Store, p verifyPlan) []verifyResult {
	type job struct{ object, target int }
	slots := make([][]verifyResult, len(p.objects)*len(targets))
	var wg sync.WaitGroup
	next := make(chan job)
	for range 16 {
		wg.Go(func() {
			for j := range next {
				o := &p.objects[j.object]
				slots[j.object*len(targets)+j.target] = checkObject(ctx, targets[j.target], j.target, o)
			}
		})
	}
	for k := range p.objects {
		for t := range targets {
			next <- job{k, t}
		}
	}
	close(next)
	wg.Wait()
	var out []verifyResult
	for _, s := range slots {
		out = append(out, s...)
	}
	return out
}

// checkObject fetches o from target s (number t) and checks its members.
func checkObject(ctx context.Context, s store.Store, t int, o *verifyObject) []verifyResult {
	if !o.pack {
		_, err := s.GetChunk(ctx, o.id)
		return []verifyResult{{target: t, at: place{fp: o.id}, err: err}}
	}
	pack, perr := s.GetPack(ctx, o.id)
	if perr != nil && !errors.Is(perr, store.ErrNotFound) {
		// Unreadable, not known bad: one error for the pack.
		return []verifyResult{{target: t, pack: o, err: perr}}
	}
	out := make([]verifyResult, 0, len(o.members))
	for _, mb := range o.members {
		err := perr
		if err == nil {
			_, err = store.DecodePackMember(pack, mb.ref, mb.fp)
		}
		out = append(out, verifyResult{target: t, at: mb.place(), err: err})
	}
	return out
}

// verifyReport classifies the results of checking plan p of source src
// in the named targets: intact, missing, corrupt, or unreadable. It
// returns the report, and a line for each target with bad chunks.
func verifyReport(src string, p verifyPlan, targets []string, results []verifyResult) (verifyJSON, []string) {
	res := verifyJSON{Source: src, Chunks: p.chunks, Unique: p.unique, Packs: p.packs, Missing: []string{}, Corrupt: []string{}, Errors: []string{}}
	for _, name := range targets {
		res.Targets = append(res.Targets, verifyTargetJSON{Target: name, Missing: []string{}, Corrupt: []string{}, Errors: []string{}})
	}
	okIn := map[place]int{} // the targets a chunk's place is intact in
	for _, r := range results {
		t := &res.Targets[r.target]
		switch {
		case r.pack != nil:
			t.Errors = append(t.Errors, fmt.Sprintf("pack %s (%d chunks): %v", r.pack.id, len(r.pack.members), r.err))
		case r.err == nil:
			t.OK++
			okIn[r.at]++
		case errors.Is(r.err, store.ErrNotFound):
			t.Missing = append(t.Missing, r.at.fp.String())
		case errors.Is(r.err, store.ErrCorrupt):
			t.Corrupt = append(t.Corrupt, r.at.fp.String())
		default:
			t.Errors = append(t.Errors, r.err.Error())
		}
	}

	// The summary over every target, and the failure naming the bad ones.
	missing, corrupt := map[string]bool{}, map[string]bool{}
	var failed []string
	for i := range res.Targets {
		t := &res.Targets[i]
		slices.Sort(t.Missing)
		slices.Sort(t.Corrupt)
		for _, fp := range t.Missing {
			missing[fp] = true
		}
		for _, fp := range t.Corrupt {
			corrupt[fp] = true
		}
		for _, e := range t.Errors {
			res.Errors = append(res.Errors, t.Target+": "+e)
		}
		if t.bad() > 0 {
			// The chunks not intact: an unreadable pack is one error
			// for all its members.
			failed = append(failed, fmt.Sprintf("%d of %d chunks missing, corrupt or unreadable in %s", res.Unique-t.OK, res.Unique, t.Target))
		}
	}
	res.Missing = append(res.Missing, slices.Sorted(maps.Keys(missing))...)
	res.Corrupt = append(res.Corrupt, slices.Sorted(maps.Keys(corrupt))...)
	for _, n := range okIn {
		if n == len(res.Targets) {
			res.OK++
		}
	}
	return res, failed
}

// printVerify prints the report as a table: a line per target, then a
// line per bad chunk or error.
func printVerify(w io.Writer, res verifyJSON) {
	fmt.Fprintf(w, "%s: %s, %d distinct stored, %s\n", res.Source, plural(res.Chunks, "chunk"), res.Unique, plural(len(res.Targets), "target"))
	if res.Unique == 0 && res.Chunks > 0 {
		// "0 ok, 0 missing" below reads like a failure.
		fmt.Fprintf(w, "  every chunk is inline in the manifest: nothing to check in the targets\n")
	}
	for _, t := range res.Targets {
		fmt.Fprintf(w, "  %s: %d ok, %d missing, %d corrupt, %d unreadable\n",
			t.Target, t.OK, len(t.Missing), len(t.Corrupt), len(t.Errors))
	}
	for _, t := range res.Targets {
		for _, fp := range t.Missing {
			fmt.Fprintf(w, "missing  %s  %s\n", fp, t.Target)
		}
		for _, fp := range t.Corrupt {
			fmt.Fprintf(w, "corrupt  %s  %s\n", fp, t.Target)
		}
		for _, e := range t.Errors {
			fmt.Fprintf(w, "error    %s: %s\n", t.Target, e)
		}
	}
}

func cmdVerify(ctx context.Context, g *globals, args []string) error {
	var at string
	var asJSON bool
	src, _, err := sourceCommand(g, "verify", "[--hostname H] [--at TIME] [--json] (SOURCE | --manifest URI|FILE)",
		"Checks that every chunk of the manifest of SOURCE is in every replication target\n(caches aside) and matches its fingerprint. Exits 1 and names the bad chunks,\nand the targets they are bad in, otherwise.", args, sourceArgs{withManifest: true},
		func(fs *flag.FlagSet) {
			fs.StringVar(&at, "at", "", "verify the version stored at or before this time")
			fs.BoolVar(&asJSON, "json", false, "print JSON")
		})
	if err != nil {
		return err
	}
	m, raw, stores, err := fetchSource(ctx, g, src, at)
	if err != nil {
		return err
	}
	if at == "" {
		warnUnflushed(g, m, "verify", "verifies")
	}
	// Only the remote stores, every one of them: a cache hit says nothing
	// about a bucket, and one good target says nothing about another.
	remote := manifestStores(stores)
	names := make([]string, len(remote))
	for i, s := range remote {
		names[i] = s.String()
	}
	p := planVerify(m)
	res, failed := verifyReport(src.String(), p, names, checkTargets(ctx, remote, p))
	failed = append(failed, checkBase(ctx, remote, raw, &res)...)
	if asJSON {
		if err := writeJSON(g.stdout, res); err != nil {
			return err
		}
	} else {
		printVerify(g.stdout, res)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s: %s\n%s", src, strings.Join(failed, "; "), repairHint(m))
	}
	return nil
}

// repairHint says how to repair a store that lost or corrupted the
// objects of m: a full sync on the host that writes the database. A
// plain sync would not do: it uploads what changed.
func repairHint(m *manifest.Manifest) string {
	return fmt.Sprintf("to upload every chunk again, run `vfsctl sync --full %s` on %s, the host that writes it, with its config", shellWord(m.SourcePath), m.Hostname)
}

// shellWord quotes s for a POSIX shell when it holds anything but
// letters, digits and the punctuation paths usually have.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+,:@%=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// checkBase checks, when raw is a format v2 manifest, that every target
// holds its base intact, noting it in res. It returns a line for each
// target whose base is missing, corrupt or unreadable.
func checkBase(ctx context.Context, targets []store.Store, raw []byte, res *verifyJSON) []string {
	if v, err := manifest.FormatVersion(raw); err != nil || v != 2 {
		return nil
	}
	h, err := manifest.DecodeHead(raw)
	if err != nil {
		return []string{err.Error()} // decoded once already: not expected
	}
	res.Base = h.BaseID.String()
	var failed []string
	for i, s := range targets {
		blob, err := s.GetBase(ctx, h.BaseID, h.BaseLen)
		if err == nil {
			_, err = h.DecodeBase(blob)
		}
		if err == nil {
			continue
		}
		t := &res.Targets[i]
		what := "unreadable"
		switch {
		case errors.Is(err, store.ErrNotFound):
			what = "missing"
		case errors.Is(err, store.ErrCorrupt), errors.Is(err, manifest.ErrBase):
			what = "corrupt"
		}
		t.Errors = append(t.Errors, fmt.Sprintf("manifest base %s %s: %v", h.BaseID, what, err))
		res.Errors = append(res.Errors, t.Target+": "+t.Errors[len(t.Errors)-1])
		failed = append(failed, fmt.Sprintf("manifest base %s %s in %s", h.BaseID, what, t.Target))
	}
	return failed
}

// plural says n things: "1 target", "2 targets".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
