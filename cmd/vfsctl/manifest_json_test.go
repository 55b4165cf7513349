package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/boule-vfs/boule/internal/memtest"
	"github.com/boule-vfs/boule/manifest"
)

// describeWhole is manifest --json built whole in memory, as vfsctl did
// before it streamed it: what writeManifestJSON must print.
func describeWhole(key string, m *manifest.Manifest) []byte {
	j := manifestJSON{
		manifestHeadJSON: manifestHeadJSON{
			Key: key, Hostname: m.Hostname, SourcePath: m.SourcePath, Generator: m.Generator,
			Size: m.Size, PageSize: m.PageSize, ChangeCounter: m.ChangeCounter,
			VersionID:   fmt.Sprintf("%x", m.VersionID),
			SourceCtime: m.SourceCtime.UTC().Format(time.RFC3339Nano),
			Created:     m.Created.UTC().Format(time.RFC3339Nano),
		},
		Chunks: make([]string, len(m.Chunks)),
		Inline: []uint32{},
	}
	for i, fp := range m.Chunks {
		j.Chunks[i] = fp.String()
	}
	for k := range m.Inline {
		j.Inline = append(j.Inline, k)
	}
	slices.Sort(j.Inline)
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

func jsonTestManifest(n int, inline ...uint32) *manifest.Manifest {
	m := &manifest.Manifest{Hostname: "h\"ost", SourcePath: "/a b/<c>.db", Generator: "boule \u00e9",
		Size: int64(n) * manifest.ChunkSize, PageSize: 4096, ChangeCounter: 7,
		Created: time.Unix(1700000000, 5), SourceCtime: time.Unix(1600000000, 0), Chunks: make([]manifest.Fingerprint, n)}
	m.VersionID[3] = 9
	for i := range m.Chunks {
		m.Chunks[i][0], m.Chunks[i][1], m.Chunks[i][31] = byte(i), byte(i>>8), 0xab
	}
	for _, k := range inline {
		if m.Inline == nil {
			m.Inline = map[uint32][]byte{}
		}
		m.Inline[k] = []byte{1}
	}
	return m
}

// TestManifestJSONStreams: manifest --json prints what encoding/json
// would, byte for byte, for no chunk, one, several, with and without
// inline chunks and a key.
func TestManifestJSONStreams(t *testing.T) {
	for _, tc := range []struct {
		key string
		m   *manifest.Manifest
	}{
		{"", jsonTestManifest(0)},
		{"k/ey", jsonTestManifest(1)},
		{"k", jsonTestManifest(1, 0)},
		{"", jsonTestManifest(300, 0, 7, 299)},
	} {
		var buf bytes.Buffer
		if err := writeManifestJSON(&buf, tc.key, tc.m); err != nil {
			t.Fatal(err)
		}
		if want := describeWhole(tc.key, tc.m); !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("%d chunks: got\n%s\nwant\n%s", len(tc.m.Chunks), buf.Bytes(), want)
		}
	}
}

// TestManifestJSONMemory: printing manifest --json allocates a fixed
// amount, whatever the number of chunks; building it whole took some
// 450 bytes a chunk.
func TestManifestJSONMemory(t *testing.T) {
	m := jsonTestManifest(200_000, 0)
	const bound = 256 << 10
	n, ok := memtest.AtMost(bound, func() {
		if err := writeManifestJSON(io.Discard, "key", m); err != nil {
			t.Fatal(err)
		}
	})
	if !ok {
		t.Errorf("manifest --json of %d chunks allocated %d bytes (%.1f a chunk), want at most %d", len(m.Chunks), n, float64(n)/float64(len(m.Chunks)), bound)
	}
}
