package manifest

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// goldenManifest is a fixed manifest whose encoding is pinned by
// TestGolden. Everything in it is deterministic.
func goldenManifest() *Manifest {
	const size = 2*ChunkSize + 4096
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i/251)
	}
	m := appManifest(size)
	m.ChangeCounter = 0x01020304
	m.VersionID = [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	m.SourceCtime = time.Unix(1700000000, 123456789)
	m.Created = time.Unix(0, 1700000001987654321)
	m.Inline = map[uint32][]byte{2: data[2*ChunkSize:]}
	for i := range NumChunks(size) {
		off := m.ChunkOffset(i)
		m.Chunks = append(m.Chunks, Sum(data[off:off+int64(ChunkLen(size, i))]))
	}
	return m
}

// goldenSum is the BLAKE3-256 of the encoding of goldenManifest. If this
// test fails, the wire format changed: that needs a new format version,
// not a new constant here.
const goldenSum = "d1d8b2126695386470c9076ad47a5c445e63b3056761aa8b641ea5ea0a9c4972"

func TestGolden(t *testing.T) {
	enc := mustMarshal(t, goldenManifest())
	checkGolden(t, "encoding", enc, goldenSum, 68+2+15+2+20+2+11+4+3*32+4+8+4096+32)
	be := binary.BigEndian
	checkFields(t, []field{
		{"version @8", uint64(be.Uint16(enc[8:])), 1},
		{"flags @10", uint64(be.Uint16(enc[10:])), 0},
		{"chunk size @12", uint64(be.Uint32(enc[12:])), 65536},
		{"db size @16", be.Uint64(enc[16:]), 2*65536 + 4096},
		{"page size @24", uint64(be.Uint32(enc[24:])), 4096},
		{"change counter @28", uint64(be.Uint32(enc[28:])), 0x01020304},
		{"ctime seconds @48", be.Uint64(enc[48:]), 1700000000},
		{"ctime nanoseconds @56", uint64(be.Uint32(enc[56:])), 123456789},
		{"created @60", be.Uint64(enc[60:]), 1700000001987654321},
		{"hostname length @68", uint64(be.Uint16(enc[68:])), 15},
		{"source path length @85", uint64(be.Uint16(enc[85:])), 20},
		{"generator length @107", uint64(be.Uint16(enc[107:])), 11},
		{"chunk count @120", uint64(be.Uint32(enc[120:])), 3},
		{"inline count @220", uint64(be.Uint32(enc[220:])), 1},
		{"inline index @224", uint64(be.Uint32(enc[224:])), 2},
		{"inline length @228", uint64(be.Uint32(enc[228:])), 4096},
	})
	if string(enc[:8]) != "BOULEMF\x00" {
		t.Errorf("magic = %q", enc[:8])
	}
	if !bytes.Equal(enc[32:48], []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}) {
		t.Errorf("version id @32 = %x", enc[32:48])
	}
	if string(enc[70:85]) != "db1.example.com" || string(enc[87:107]) != "/var/lib/app/main.db" ||
		string(enc[109:120]) != "boule 0.1.0" {
		t.Errorf("strings at 70, 87, 109 = %q %q %q", enc[70:85], enc[87:107], enc[109:120])
	}
	m := goldenManifest()
	for i, f := range m.Chunks {
		if off := 124 + 32*i; !bytes.Equal(enc[off:off+32], f[:]) {
			t.Errorf("fingerprint %d @%d = %x, want %x", i, off, enc[off:off+32], f)
		}
	}
	if !bytes.Equal(enc[232:232+4096], m.Inline[2]) {
		t.Errorf("inline bytes @232 differ")
	}
	if sum := Sum(enc[:len(enc)-32]); !bytes.Equal(enc[len(enc)-32:], sum[:]) {
		t.Errorf("trailing checksum = %x, want %x", enc[len(enc)-32:], sum)
	}
}
