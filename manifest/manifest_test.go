package manifest

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNumChunksChunkLen(t *testing.T) {
	tests := []struct {
		size int64
		n    int
		last int
	}{
		{0, 0, 0},
		{1, 1, 1},
		{4096, 1, 4096},
		{ChunkSize - 1, 1, ChunkSize - 1},
		{ChunkSize, 1, ChunkSize},
		{ChunkSize + 1, 2, 1},
		{3 * ChunkSize, 3, ChunkSize},
		{1 << 30, 16384, ChunkSize},
		{MaxSize, 1 << 26, ChunkSize},
		{MaxSize - 512, 1 << 26, ChunkSize - 512},
	}
	for _, tt := range tests {
		if got := NumChunks(tt.size); got != tt.n {
			t.Errorf("NumChunks(%d) = %d, want %d", tt.size, got, tt.n)
		}
		if tt.n > 0 {
			if got := ChunkLen(tt.size, tt.n-1); got != tt.last {
				t.Errorf("ChunkLen(%d, %d) = %d, want %d", tt.size, tt.n-1, got, tt.last)
			}
			if tt.n > 1 {
				if got := ChunkLen(tt.size, 0); got != ChunkSize {
					t.Errorf("ChunkLen(%d, 0) = %d, want %d", tt.size, got, ChunkSize)
				}
			}
		}
		if got := ChunkLen(tt.size, tt.n); got != 0 {
			t.Errorf("ChunkLen(%d, %d) past the end = %d, want 0", tt.size, tt.n, got)
		}
		if got := ChunkLen(tt.size, -1); got != 0 {
			t.Errorf("ChunkLen(%d, -1) = %d, want 0", tt.size, got)
		}
	}
	if got := NumChunks(-1); got != 0 {
		t.Errorf("NumChunks(-1) = %d, want 0", got)
	}
}

func TestChunkOffset(t *testing.T) {
	m := newManifest(5*ChunkSize + 10)
	for i, want := range []int64{0, 65536, 131072, 327680} {
		idx := []int{0, 1, 2, 5}[i]
		if got := m.ChunkOffset(idx); got != want {
			t.Errorf("ChunkOffset(%d) = %d, want %d", idx, got, want)
		}
	}
	// The last chunk ends exactly at Size.
	last := len(m.Chunks) - 1
	if end := m.ChunkOffset(last) + int64(ChunkLen(m.Size, last)); end != m.Size {
		t.Errorf("last chunk ends at %d, want %d", end, m.Size)
	}
}

func TestRoundTrip(t *testing.T) {
	unicode := newManifest(2*ChunkSize+100, 0)
	unicode.Hostname = "hôte-ü.例え"
	unicode.SourcePath = "/srv/données/日本語/база данных.db"
	unicode.Generator = "boule 0.1.0 — ünïcode"

	local := newManifest(ChunkSize)
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	local.SourceCtime = time.Date(2024, 2, 29, 23, 59, 59, 999999999, zone)
	local.Created = time.Date(2024, 3, 1, 0, 0, 0, 1, zone).Round(0)

	extremes := newManifest(4096)
	extremes.PageSize = 65536
	extremes.ChangeCounter = 0xffffffff
	extremes.Generator = ""
	extremes.SourceCtime = time.Time{} // year 1: negative Unix seconds
	extremes.Created = time.Unix(0, -1<<63)
	extremes.Hostname = strings.Repeat("h", maxHostname)
	extremes.SourcePath = "/" + strings.Repeat("p", maxSourcePath-1)

	tests := []struct {
		name string
		m    *Manifest
	}{
		{"empty db", newManifest(0)},
		{"one short chunk", newManifest(4096)},
		{"one byte", newManifest(1)},
		{"exact multiple", newManifest(3 * ChunkSize)},
		{"many chunks", newManifest(1000*ChunkSize + 512)},
		{"inline chunk 0", newManifest(5*ChunkSize, 0)},
		{"inline short last chunk", newManifest(2*ChunkSize+1024, 2)},
		{"inline several", newManifest(4*ChunkSize+1, 0, 2, 4)},
		{"inline only chunk", newManifest(100, 0)},
		{"unicode path", unicode},
		{"non-UTC times", local},
		{"extremes", extremes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := mustMarshal(t, tt.m)
			got, err := Decode(enc)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			sameManifest(t, got, tt.m)
			// The encoding is canonical: re-encoding gives the same bytes.
			if enc2 := mustMarshal(t, got); !bytes.Equal(enc, enc2) {
				t.Errorf("re-encoding differs from the original encoding")
			}
			// Decode must not alias its input.
			for i := range enc {
				enc[i] = 0
			}
			sameManifest(t, got, tt.m)
		})
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(m *Manifest)
		want  error
		field string
	}{
		{"empty hostname", func(m *Manifest) { m.Hostname = "" }, ErrInvalid, "hostname"},
		{"long hostname", func(m *Manifest) { m.Hostname = strings.Repeat("h", 256) }, ErrInvalid, "hostname"},
		{"hostname with slash", func(m *Manifest) { m.Hostname = "a/b" }, ErrInvalid, "hostname"},
		{"hostname with NUL", func(m *Manifest) { m.Hostname = "a\x00b" }, ErrInvalid, "hostname"},
		{"hostname not UTF-8", func(m *Manifest) { m.Hostname = "a\xffb" }, ErrInvalid, "hostname"},
		{"empty path", func(m *Manifest) { m.SourcePath = "" }, ErrInvalid, "source path"},
		{"relative path", func(m *Manifest) { m.SourcePath = "var/main.db" }, ErrInvalid, "source path"},
		{"NUL in path", func(m *Manifest) { m.SourcePath = "/var/ma\x00in.db" }, ErrInvalid, "source path"},
		{"path not UTF-8", func(m *Manifest) { m.SourcePath = "/var/\xc3" }, ErrInvalid, "source path"},
		{"long path", func(m *Manifest) { m.SourcePath = "/" + strings.Repeat("p", 4096) }, ErrInvalid, "source path"},
		{"long generator", func(m *Manifest) { m.Generator = strings.Repeat("g", 256) }, ErrInvalid, "generator"},
		{"NUL in generator", func(m *Manifest) { m.Generator = "boule\x00" }, ErrInvalid, "generator"},
		{"negative size", func(m *Manifest) { m.Size = -1 }, ErrInvalid, "size"},
		{"size > MaxSize", func(m *Manifest) { m.Size = MaxSize + 1 }, ErrInvalid, "size"},
		{"page size 1000", func(m *Manifest) { m.PageSize = 1000 }, ErrInvalid, "page size"},
		{"page size 256", func(m *Manifest) { m.PageSize = 256 }, ErrInvalid, "page size"},
		{"page size 131072", func(m *Manifest) { m.PageSize = 131072 }, ErrInvalid, "page size"},
		{"created zero", func(m *Manifest) { m.Created = time.Time{} }, ErrInvalid, "created"},
		{"created year 2300", func(m *Manifest) { m.Created = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }, ErrInvalid, "created"},
		{"too few chunks", func(m *Manifest) { m.Chunks = m.Chunks[:2] }, ErrInvalid, "chunks"},
		{"too many chunks", func(m *Manifest) { m.Chunks = append(m.Chunks, Fingerprint{}) }, ErrInvalid, "chunks"},
		{"inline index out of range", func(m *Manifest) { m.Inline[3] = chunkBytes(m.Size, 0) }, ErrInvalid, "inline chunk 3"},
		{"inline wrong length", func(m *Manifest) { m.Inline[0] = m.Inline[0][:100] }, ErrInvalid, "inline chunk 0"},
		{"inline short chunk as full", func(m *Manifest) { m.Inline[2] = make([]byte, ChunkSize) }, ErrInvalid, "inline chunk 2"},
		{"inline mismatch", func(m *Manifest) { m.Inline[0] = chunkBytes(m.Size, 1) }, ErrInlineMismatch, "inline chunk 0"},
		{"inline mismatch in chunks", func(m *Manifest) { m.Chunks[0] = ZeroChunk }, ErrInlineMismatch, "inline chunk 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newManifest(2*ChunkSize+100, 0)
			if err := m.Validate(); err != nil {
				t.Fatalf("base manifest invalid: %v", err)
			}
			tt.edit(m)
			err := m.Validate()
			if !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "manifest: "+tt.field+": ") {
				t.Errorf("error %q does not name field %q", err, tt.field)
			}
			if b, err2 := m.MarshalBinary(); b != nil || !errors.Is(err2, tt.want) {
				t.Errorf("MarshalBinary = %d bytes, %v; want nil, %v", len(b), err2, tt.want)
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	var m *Manifest
	if err := m.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil Validate = %v, want ErrInvalid", err)
	}
}

func TestErrorMessage(t *testing.T) {
	m := newManifest(0)
	m.SourcePath = "/a\x00"
	const want = "manifest: source path: contains NUL: manifest: invalid"
	if err := m.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %q", err, want)
	}
}
