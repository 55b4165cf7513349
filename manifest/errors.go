package manifest

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package wrap one of these with
// context naming the offending field; test for them with [errors.Is].
var (
	// ErrTruncated is returned when an encoded manifest ends before all of
	// its fields have been read.
	ErrTruncated = errors.New("manifest: truncated")

	// ErrMagic is returned when an encoded manifest does not start with the
	// magic bytes "BOULEMF\x00".
	ErrMagic = errors.New("manifest: bad magic")

	// ErrVersion is returned when an encoded manifest has a format version
	// this package does not understand (anything other than 1 and 2), or
	// when Decode is given a v2 head or DecodeHead a v1 manifest.
	ErrVersion = errors.New("manifest: unsupported format version")

	// ErrFlags is returned when an encoded manifest has any flag bit set;
	// all flags are reserved in format v1.
	ErrFlags = errors.New("manifest: unsupported flags")

	// ErrChecksum is returned when the trailing BLAKE3-256 checksum of an
	// encoded manifest does not match the bytes that precede it.
	ErrChecksum = errors.New("manifest: checksum mismatch")

	// ErrInvalid is returned when a manifest, in memory or decoded, breaks
	// one of the format's invariants (a field out of range, a count that
	// does not match the size, a malformed string, trailing bytes, ...).
	ErrInvalid = errors.New("manifest: invalid")

	// ErrInlineMismatch is returned when an inline chunk's bytes do not hash
	// to the fingerprint listed for that chunk index.
	ErrInlineMismatch = errors.New("manifest: inline chunk does not match its fingerprint")

	// ErrBase is returned when the base of a format v2 manifest does not
	// match its head: another length, bytes that do not hash to the ID the
	// head names, a corrupt encoding, or a chunk count, inline chunks or a
	// database that the head does not allow.
	ErrBase = errors.New("manifest: base does not match its head")

	// ErrFingerprint is returned when a string is not a well-formed
	// fingerprint: exactly 64 lowercase hexadecimal digits.
	ErrFingerprint = errors.New("manifest: malformed fingerprint")
)

// invalidf returns an error wrapping ErrInvalid, such as
// "manifest: source path: contains NUL: manifest: invalid".
func invalidf(field, format string, args ...any) error {
	return fmt.Errorf("manifest: %s: %s: %w", field, fmt.Sprintf(format, args...), ErrInvalid)
}

// truncated returns an error wrapping ErrTruncated naming the field being
// read when the input ran out.
func truncated(field string) error {
	return fmt.Errorf("manifest: %s: %w", field, ErrTruncated)
}
