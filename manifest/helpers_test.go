package manifest

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

// chunkBytes returns deterministic pseudo-random contents for chunk i of a
// file of the given size.
func chunkBytes(size int64, i int) []byte {
	r := rand.New(rand.NewPCG(uint64(size), uint64(i)))
	b := make([]byte, ChunkLen(size, i))
	for j := range b {
		b[j] = byte(r.Uint32())
	}
	return b
}

// appManifest returns a manifest of size bytes, without chunks, of the
// database /var/lib/app/main.db of host db1.example.com.
func appManifest(size int64) *Manifest {
	return &Manifest{
		Hostname:   "db1.example.com",
		SourcePath: "/var/lib/app/main.db",
		Generator:  "boule 0.1.0",
		Size:       size,
		PageSize:   4096,
	}
}

// checkGolden fails t unless enc, the golden encoding of what, hashes
// to sum (BLAKE3-256) and is n bytes long.
func checkGolden(t testing.TB, what string, enc []byte, sum string, n int) {
	t.Helper()
	if got := Sum(enc).String(); got != sum {
		t.Errorf("BLAKE3 of golden %s = %s, want %s", what, got, sum)
	}
	if len(enc) != n {
		t.Fatalf("golden %s is %d bytes, want %d", what, len(enc), n)
	}
}

// newManifest returns a valid manifest for a file of the given size. The
// chunks listed in inline are carried inline and their fingerprints are real;
// the others get arbitrary fingerprints (Validate cannot check them).
func newManifest(size int64, inline ...int) *Manifest {
	m := appManifest(size)
	m.ChangeCounter = 7
	m.VersionID = [16]byte{0xde, 0xad, 0xbe, 0xef, 15: 1}
	m.SourceCtime = time.Unix(1700000000, 123456789).UTC()
	m.Created = time.Unix(1700000001, 987654321).UTC()
	if size == 0 {
		m.PageSize = 0
	}
	n := NumChunks(size)
	r := rand.New(rand.NewPCG(uint64(size), 99))
	for range n {
		var f Fingerprint
		for j := 0; j < len(f); j += 8 {
			binary.LittleEndian.PutUint64(f[j:], r.Uint64())
		}
		m.Chunks = append(m.Chunks, f)
	}
	for _, i := range inline {
		if m.Inline == nil {
			m.Inline = map[uint32][]byte{}
		}
		data := chunkBytes(size, i)
		m.Inline[uint32(i)] = data
		m.Chunks[i] = Sum(data)
	}
	return m
}

func mustMarshal(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	return b
}

// withChecksum returns body followed by its correct trailing checksum.
func withChecksum(body []byte) []byte {
	sum := Sum(body)
	return append(slices.Clip(body), sum[:]...)
}

// patch copies the encoding enc, lets edit change its body (everything but
// the checksum) and returns the result with a correct checksum, so that the
// change reaches the field parser.
func patch(enc []byte, edit func(body []byte) []byte) []byte {
	body := bytes.Clone(enc[:len(enc)-checksumSize])
	return withChecksum(edit(body))
}

// sameManifest reports differences between want and a decoded got; got's
// times must be in UTC.
func sameManifest(t *testing.T, got, want *Manifest) {
	t.Helper()
	if got.Hostname != want.Hostname || got.SourcePath != want.SourcePath || got.Generator != want.Generator {
		t.Errorf("strings: got %q %q %q, want %q %q %q", got.Hostname, got.SourcePath, got.Generator,
			want.Hostname, want.SourcePath, want.Generator)
	}
	if got.Size != want.Size || got.PageSize != want.PageSize || got.ChangeCounter != want.ChangeCounter {
		t.Errorf("numbers: got %d %d %d, want %d %d %d", got.Size, got.PageSize, got.ChangeCounter,
			want.Size, want.PageSize, want.ChangeCounter)
	}
	if got.VersionID != want.VersionID {
		t.Errorf("version id: got %x, want %x", got.VersionID, want.VersionID)
	}
	if !got.SourceCtime.Equal(want.SourceCtime) || got.SourceCtime.Location() != time.UTC {
		t.Errorf("source ctime: got %v, want %v in UTC", got.SourceCtime, want.SourceCtime)
	}
	if !got.Created.Equal(want.Created) || got.Created.Location() != time.UTC {
		t.Errorf("created: got %v, want %v in UTC", got.Created, want.Created)
	}
	if !slices.Equal(got.Chunks, want.Chunks) {
		t.Errorf("chunks: got %d, want %d, or contents differ", len(got.Chunks), len(want.Chunks))
	}
	if !maps.EqualFunc(got.Inline, want.Inline, bytes.Equal) {
		t.Errorf("inline: got keys %v, want %v, or contents differ",
			slices.Sorted(maps.Keys(got.Inline)), slices.Sorted(maps.Keys(want.Inline)))
	}
	if !reflect.DeepEqual(got.Packs, want.Packs) {
		t.Errorf("packs: got %+v, want %+v", got.Packs, want.Packs)
	}
}

// mustBase returns the base of m, as NewBase encodes it, its ID, and the
// manifest it decodes to.
func mustBase(t testing.TB, m *Manifest) ([]byte, Fingerprint, *Manifest) {
	t.Helper()
	blob, id, err := NewBase(m)
	if err != nil {
		t.Fatal(err)
	}
	base, err := Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	return blob, id, base
}

// field is a number that a golden encoding holds at a fixed offset.
type field struct {
	name      string
	got, want uint64
}

// checkFields reports each field whose value is not the one wanted.
func checkFields(t testing.TB, fields []field) {
	t.Helper()
	for _, c := range fields {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
