package main

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// fp is a fingerprint made up for a test, named by one byte.
func fp(b byte) manifest.Fingerprint { return manifest.Fingerprint{0: b} }

// planManifest: chunk 0 inline (a), 1 own (b), 2 and 4 in pack P (c, d),
// 3 a repeat of b, 5 in pack Q (e), 6 a repeat of c, 7 a stored copy of
// the inline a, 8 a repeat of e.
func planManifest() *manifest.Manifest {
	p, q := fp(0xf0), fp(0xf1)
	return &manifest.Manifest{
		Chunks: []manifest.Fingerprint{fp('a'), fp('b'), fp('c'), fp('b'), fp('d'), fp('e'), fp('c'), fp('a'), fp('e')},
		Inline: map[uint32][]byte{0: []byte("a")},
		Packs: []manifest.Pack{
			{ID: p, Members: []manifest.PackMember{{Index: 2, Offset: 0, Length: 10}, {Index: 4, Offset: 10, Length: 20}, {Index: 6, Offset: 30, Length: 10}}},
			{ID: q, Members: []manifest.PackMember{{Index: 5, Offset: 0, Length: 7}}},
		},
	}
}

// TestPlanVerify: verify checks each place a chunk is stored at once,
// inline ones aside, in its own object or in its pack, fetched once for
// all.
func TestPlanVerify(t *testing.T) {
	p, q := fp(0xf0), fp(0xf1)
	for _, tc := range []struct {
		name string
		m    *manifest.Manifest
		want verifyPlan
	}{
		{"empty", &manifest.Manifest{}, verifyPlan{}},
		{"inline only", &manifest.Manifest{Chunks: []manifest.Fingerprint{fp('a')}, Inline: map[uint32][]byte{0: []byte("a")}}, verifyPlan{chunks: 1}},
		// c is in pack p twice, e in pack q and in an object of its own:
		// a restore reads each of those places, and verify checks them.
		{"objects and packs", planManifest(), verifyPlan{chunks: 9, packs: 2, unique: 7, objects: []verifyObject{
			{id: fp('b'), members: []verifyMember{{fp: fp('b')}}},
			{pack: true, id: p, members: []verifyMember{
				{fp('c'), manifest.PackRef{ID: p, Offset: 0, Length: 10}},
				{fp('d'), manifest.PackRef{ID: p, Offset: 10, Length: 20}},
				{fp('c'), manifest.PackRef{ID: p, Offset: 30, Length: 10}},
			}},
			{pack: true, id: q, members: []verifyMember{{fp('e'), manifest.PackRef{ID: q, Offset: 0, Length: 7}}}},
			{id: fp('a'), members: []verifyMember{{fp: fp('a')}}},
			{id: fp('e'), members: []verifyMember{{fp: fp('e')}}},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planVerify(tc.m)
			if got.chunks != tc.want.chunks || got.packs != tc.want.packs || got.unique != tc.want.unique {
				t.Errorf("planVerify() counts %d chunks, %d packs, %d unique; want %d, %d, %d",
					got.chunks, got.packs, got.unique, tc.want.chunks, tc.want.packs, tc.want.unique)
			}
			if !slices.EqualFunc(got.objects, tc.want.objects, func(a, b verifyObject) bool {
				return a.pack == b.pack && a.id == b.id && slices.Equal(a.members, b.members)
			}) {
				t.Errorf("planVerify().objects=%+v, want %+v", got.objects, tc.want.objects)
			}
		})
	}
}

// reportManifest is planManifest with one stored place per chunk: c's
// second member at its first one's place, and e's second occurrence in
// its pack too. Its five places: b, c and d in pack 0xf0, e in pack
// 0xf1, and a.
func reportManifest() *manifest.Manifest {
	m := planManifest()
	m.Packs[0].Members[2].Offset = 0
	m.Packs[1].Members = append(m.Packs[1].Members, manifest.PackMember{Index: 8, Offset: 0, Length: 7})
	return m
}

// TestVerifyReport: what each target said of each chunk is classified
// (intact, missing, corrupt, unreadable), per target and over all, and
// each target with a bad chunk makes a failure line.
func TestVerifyReport(t *testing.T) {
	plan := planVerify(reportManifest())
	pack := &plan.objects[1]
	targets := []string{"dir:/one", "dir:/two"}
	// ok is every chunk intact in target i.
	ok := func(i int) []verifyResult {
		return []verifyResult{{target: i, at: place{fp: fp('b')}}, {target: i, at: place{fp: fp('c')}}, {target: i, at: place{fp: fp('d')}}, {target: i, at: place{fp: fp('e')}}, {target: i, at: place{fp: fp('a')}}}
	}
	notFound := fmt.Errorf("get chunk: %w", store.ErrNotFound)
	corrupt := fmt.Errorf("get chunk: %w", store.ErrCorrupt)
	refused := errors.New("connection refused")
	for _, tc := range []struct {
		name    string
		results []verifyResult
		ok      [3]int // intact in every target, in the first, in the second
		missing, corrupt,
		errs [][]string // over all, in the first, in the second
		failed []string
	}{
		{
			name: "all intact", results: append(ok(0), ok(1)...),
			ok: [3]int{5, 5, 5}, missing: [][]string{{}, {}, {}}, corrupt: [][]string{{}, {}, {}}, errs: [][]string{{}, {}, {}},
		},
		{
			name: "missing and corrupt in the second",
			results: append(ok(0),
				verifyResult{target: 1, at: place{fp: fp('b')}, err: notFound}, verifyResult{target: 1, at: place{fp: fp('c')}, err: corrupt},
				verifyResult{target: 1, at: place{fp: fp('d')}}, verifyResult{target: 1, at: place{fp: fp('e')}, err: notFound}, verifyResult{target: 1, at: place{fp: fp('a')}}),
			ok:      [3]int{2, 5, 2},
			missing: [][]string{{fp('b').String(), fp('e').String()}, {}, {fp('b').String(), fp('e').String()}},
			corrupt: [][]string{{fp('c').String()}, {}, {fp('c').String()}},
			errs:    [][]string{{}, {}, {}},
			failed:  []string{"3 of 5 chunks missing, corrupt or unreadable in dir:/two"},
		},
		{
			name: "bad in both",
			results: []verifyResult{
				{target: 0, at: place{fp: fp('b')}, err: notFound}, {target: 0, pack: pack, err: refused}, {target: 0, at: place{fp: fp('e')}}, {target: 0, at: place{fp: fp('a')}},
				{target: 1, at: place{fp: fp('b')}, err: notFound}, {target: 1, at: place{fp: fp('c')}}, {target: 1, at: place{fp: fp('d')}}, {target: 1, at: place{fp: fp('e')}, err: refused}, {target: 1, at: place{fp: fp('a')}},
			},
			ok:      [3]int{1, 2, 3},
			missing: [][]string{{fp('b').String()}, {fp('b').String()}, {fp('b').String()}},
			corrupt: [][]string{{}, {}, {}},
			errs: [][]string{
				{"dir:/one: pack " + pack.id.String() + " (2 chunks): connection refused", "dir:/two: connection refused"},
				{"pack " + pack.id.String() + " (2 chunks): connection refused"},
				{"connection refused"},
			},
			failed: []string{"3 of 5 chunks missing, corrupt or unreadable in dir:/one", "2 of 5 chunks missing, corrupt or unreadable in dir:/two"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, failed := verifyReport("boule://h/a.db", plan, targets, tc.results)
			if res.Source != "boule://h/a.db" || res.Chunks != 9 || res.Unique != 5 || res.Packs != 2 || len(res.Targets) != 2 {
				t.Fatalf("verifyReport()=%+v, want boule://h/a.db, 9 chunks, 5 unique, 2 packs, 2 targets", res)
			}
			if got := [3]int{res.OK, res.Targets[0].OK, res.Targets[1].OK}; got != tc.ok {
				t.Errorf("verifyReport() ok=%v, want %v", got, tc.ok)
			}
			for i, got := range [][3][]string{
				{res.Missing, res.Targets[0].Missing, res.Targets[1].Missing},
				{res.Corrupt, res.Targets[0].Corrupt, res.Targets[1].Corrupt},
				{res.Errors, res.Targets[0].Errors, res.Targets[1].Errors},
			} {
				want := [][][]string{tc.missing, tc.corrupt, tc.errs}[i]
				for k := range got {
					// Never nil: JSON shows [] rather than null.
					if got[k] == nil || !slices.Equal(got[k], want[k]) {
						t.Errorf("verifyReport() %s[%d]=%#v, want %q", []string{"missing", "corrupt", "errors"}[i], k, got[k], want[k])
					}
				}
			}
			if !slices.Equal(failed, tc.failed) {
				t.Errorf("verifyReport() failed=%q, want %q", failed, tc.failed)
			}
		})
	}
}

func TestShellWord(t *testing.T) {
	for in, want := range map[string]string{
		"/data/app.db":     "/data/app.db",
		"/data/my app.db":  "'/data/my app.db'",
		"/data/it's.db":    `'/data/it'\''s.db'`,
		"/data/$HOME/a.db": "'/data/$HOME/a.db'",
		"":                 "''",
	} {
		if got := shellWord(in); got != want {
			t.Errorf("shellWord(%q)=%s, want %s", in, got, want)
		}
	}
}
