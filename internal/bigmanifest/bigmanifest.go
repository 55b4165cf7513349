package bigmanifest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/boule-vfs/boule/manifest"
)

// Spec describes a manifest to write.
type Spec struct {
	// Hostname and SourcePath are the manifest's; empty means "h" and
	// "/big.db".
	Hostname, SourcePath string
	// Size is the database size in bytes, up to manifest.MaxSize.
	Size int64
	// First, if not nil, is chunk 0's bytes, carried inline (typically a
	// small SQLite database, zero-padded to the chunk's length). Every
	// other chunk is a chunk of zeros (manifest.ZeroChunk, or the zero
	// fingerprint of the shorter last chunk).
	First []byte
	// PageSize is the manifest's page size; zero means 4096.
	PageSize uint32
}

// EncodedLen returns the length of the manifest's encoding.
func (s Spec) EncodedLen() int64 {
	s.defaults()
	n := int64(manifest.NumChunks(s.Size))
	l := int64(68+2+len(s.Hostname)+2+len(s.SourcePath)+2) + 4 + n*manifest.FingerprintSize + 4 + 32
	if s.First != nil {
		l += 8 + int64(len(s.First))
	}
	return l
}

func (s *Spec) defaults() {
	if s.Hostname == "" {
		s.Hostname = "h"
	}
	if s.SourcePath == "" {
		s.SourcePath = "/big.db"
	}
	if s.PageSize == 0 {
		s.PageSize = 4096
	}
}

// WriteTo writes the manifest's v1 encoding to w and returns the bytes
// written.
func (s Spec) WriteTo(w io.Writer) (int64, error) {
	s.defaults()
	n := manifest.NumChunks(s.Size)
	if s.Size < 0 || s.Size > manifest.MaxSize {
		return 0, fmt.Errorf("bigmanifest: size %d out of range", s.Size)
	}
	if s.First != nil && (n == 0 || len(s.First) != manifest.ChunkLen(s.Size, 0)) {
		return 0, fmt.Errorf("bigmanifest: first chunk of %d bytes, want %d", len(s.First), manifest.ChunkLen(s.Size, 0))
	}
	h := blake3.New()
	cw := &countWriter{w: bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)}
	var b []byte
	b = append(b, "BOULEMF\x00"...)
	b = binary.BigEndian.AppendUint16(b, 1) // version
	b = binary.BigEndian.AppendUint16(b, 0) // flags
	b = binary.BigEndian.AppendUint32(b, manifest.ChunkSize)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Size))
	b = binary.BigEndian.AppendUint32(b, s.PageSize)
	b = binary.BigEndian.AppendUint32(b, 1)   // change counter
	b = append(b, make([]byte, 16)...)        // version ID
	b = binary.BigEndian.AppendUint64(b, 1)   // source ctime seconds
	b = binary.BigEndian.AppendUint32(b, 0)   // and nanoseconds
	b = binary.BigEndian.AppendUint64(b, 2e9) // created, Unix ns
	for _, str := range []string{s.Hostname, s.SourcePath, ""} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(str)))
		b = append(b, str...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	cw.Write(b)

	// The fingerprints, a megabyte at a time.
	rest := n
	if s.First != nil {
		fp := manifest.Sum(s.First)
		cw.Write(fp[:])
		rest--
	}
	last := manifest.ZeroChunk
	if l := manifest.ChunkLen(s.Size, n-1); n > 0 && l != manifest.ChunkSize {
		last = manifest.Sum(make([]byte, l))
	}
	if rest > 0 {
		block := bytes.Repeat(manifest.ZeroChunk[:], 1<<15)
		full := rest - 1 // chunks of zeros before the last
		for full > 0 {
			k := min(full, 1<<15)
			cw.Write(block[:k*manifest.FingerprintSize])
			full -= k
		}
		cw.Write(last[:])
	}

	b = b[:0]
	if s.First != nil {
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.First)))
		cw.Write(b)
		cw.Write(s.First)
	} else {
		cw.Write(binary.BigEndian.AppendUint32(b, 0))
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		return cw.n, err
	}
	if cw.err != nil {
		return cw.n, cw.err
	}
	sum := h.Sum(nil)
	k, err := w.Write(sum)
	return cw.n + int64(k), err
}

// countWriter counts the bytes written and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) {
	if c.err != nil {
		return
	}
	k, err := c.w.Write(p)
	c.n += int64(k)
	c.err = err
}

// Zstd writes the manifest as one zstd frame at the fastest level, as
// Boule stores manifests. With declare, the frame header states the
// decoded size, as Boule's encoder does; without, it states none, as a
// streaming encoder does (unless the manifest fits in a single block,
// whose size the encoder knows when it writes the header).
func (s Spec) Zstd(w io.Writer, declare bool) error {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		return err
	}
	if declare {
		e.ResetContentSize(w, s.EncodedLen())
	} else {
		e.Reset(w)
	}
	if _, err := s.WriteTo(e); err != nil {
		e.Close()
		return err
	}
	return e.Close()
}

// DeclareSize returns a copy of frame, a zstd frame whose header declares
// no content size (as Zstd writes it without declare), with a header that
// declares size instead, true or not. Rewriting the header is much faster
// than compressing gigabytes again.
func DeclareSize(frame []byte, size uint64) ([]byte, error) {
	if len(frame) < 6 || !bytes.HasPrefix(frame, []byte{0x28, 0xB5, 0x2F, 0xFD}) {
		return nil, fmt.Errorf("bigmanifest: not a zstd frame")
	}
	fhd := frame[4]
	if fhd>>6 != 0 || fhd&0x20 != 0 {
		return nil, fmt.Errorf("bigmanifest: the frame declares its size already")
	}
	// After the descriptor: the window descriptor, and the dictionary ID
	// if any (0, 1, 2 or 4 bytes). The 8-byte size follows them.
	end := 6 + [4]int{0, 1, 2, 4}[fhd&3]
	if len(frame) < end {
		return nil, fmt.Errorf("bigmanifest: truncated frame header")
	}
	out := make([]byte, 0, len(frame)+8)
	out = append(out, frame[:4]...)
	out = append(out, fhd|3<<6)
	out = append(out, frame[5:end]...)
	out = binary.LittleEndian.AppendUint64(out, size)
	return append(out, frame[end:]...), nil
}
