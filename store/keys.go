package store

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/boule-vfs/boule/manifest"
)

// Object keys; doc/FORMAT.md, "Store layout and object keys", specifies
// them byte by byte.

// Domain-separation prefixes of the hashes that lead manifest keys.
const (
	hostHashPrefix = "boule host\x00"
	pathHashPrefix = "boule path\x00"
)

// Shortening of long key components. A component whose percent-encoded
// form is longer than the limit keeps its first and last keep bytes
// around '^', the 64 hex digits of BLAKE3-256 of the raw string, and '^'.
const (
	nameLimit = 200
	nameKeep  = 80 // shortened name: 80 + 1 + 64 + 1 + 80 = 226 bytes
	hostLimit = 100
	hostKeep  = 17 // shortened host: 17 + 1 + 64 + 1 + 17 = 100 bytes
)

// ChunkKey returns the key of the chunk with fingerprint fp: its first
// two hex digits, '/', and all 64, such as "3b/3bdeaf8f…7d56".
func ChunkKey(fp manifest.Fingerprint) string {
	h := fp.String()
	return h[:2] + "/" + h
}

// ParseChunkKey returns the fingerprint named by a key of the form
// ChunkKey returns.
func ParseChunkKey(key string) (manifest.Fingerprint, error) {
	if len(key) != 67 || key[2] != '/' || key[:2] != key[3:5] {
		return manifest.Fingerprint{}, fmt.Errorf("store: chunk key %q: not <2 hex>/<64 hex>", key)
	}
	fp, err := manifest.ParseFingerprint(key[3:])
	if err != nil {
		return manifest.Fingerprint{}, fmt.Errorf("store: chunk key %q: %w", key, err)
	}
	return fp, nil
}

// ManifestKey returns the key under which the manifest of the database at
// the absolute path on host hostname is stored:
//
//	<hh>-<host>/<ph>-<name>
//
// where hh and ph are the first 4 hex digits of BLAKE3-256 of
// "boule host\x00"+hostname and "boule path\x00"+path, and host and name
// are hostname and path percent-encoded (every byte outside
// [A-Za-z0-9._-] becomes %XX, uppercase), shortened when long. The key is
// printable ASCII with exactly one '/', at most 337 bytes long. The path
// is used as given; callers pass a canonical path.
//
// It fails if hostname is empty, or path is not absolute, or either
// contains NUL.
func ManifestKey(hostname, path string) (string, error) {
	hp, err := HostPrefix(hostname)
	if err != nil {
		return "", err
	}
	if path == "" || path[0] != '/' {
		return "", fmt.Errorf("store: manifest key: path %q is not absolute", path)
	}
	if strings.IndexByte(path, 0) >= 0 {
		return "", errors.New("store: manifest key: path contains NUL")
	}
	return hp + prefixHash(pathHashPrefix, path) + "-" + fitComponent(percentEncode(path), path, nameLimit, nameKeep), nil
}

// HostPrefix returns the prefix shared by the keys of every manifest of
// host hostname, "<hh>-<host>/", for listing them.
func HostPrefix(hostname string) (string, error) {
	if hostname == "" {
		return "", errors.New("store: manifest key: empty hostname")
	}
	if strings.IndexByte(hostname, 0) >= 0 {
		return "", errors.New("store: manifest key: hostname contains NUL")
	}
	return prefixHash(hostHashPrefix, hostname) + "-" + fitComponent(percentEncode(hostname), hostname, hostLimit, hostKeep) + "/", nil
}

// ParseManifestKey inverts ManifestKey. It checks the key's structure,
// and for each of its two components that was not shortened it decodes
// the string and checks the hash prefix. hashed reports whether either
// component was shortened, in which case that component's string is
// returned empty: it cannot be recovered from the key.
func ParseManifestKey(key string) (hostname, path string, hashed bool, err error) {
	hostPart, namePart, ok := strings.Cut(key, "/")
	if !ok || strings.IndexByte(namePart, '/') >= 0 {
		return "", "", false, fmt.Errorf("store: manifest key %q: want exactly one '/'", key)
	}
	hostname, hh, err := parseComponent(hostPart, hostHashPrefix, hostLimit, hostKeep)
	if err != nil {
		return "", "", false, fmt.Errorf("store: manifest key %q: host: %v", key, err)
	}
	path, ph, err := parseComponent(namePart, pathHashPrefix, nameLimit, nameKeep)
	if err != nil {
		return "", "", false, fmt.Errorf("store: manifest key %q: name: %v", key, err)
	}
	if !ph && path[0] != '/' {
		return "", "", false, fmt.Errorf("store: manifest key %q: path is not absolute", key)
	}
	return hostname, path, hh || ph, nil
}

// CheckManifestKey reports whether key is a well-formed manifest key, as
// stores require before using it as an object name or a file path.
func CheckManifestKey(key string) error {
	_, _, _, err := ParseManifestKey(key)
	return err
}

// prefixHash returns the first 4 hex digits of BLAKE3-256(domain+s).
func prefixHash(domain, s string) string {
	h := blake3.New()
	_, _ = h.WriteString(domain)
	_, _ = h.WriteString(s)
	var sum [32]byte
	h.Sum(sum[:0])
	return hex.EncodeToString(sum[:2])
}

// fitComponent shortens enc, the percent-encoding of raw, when it is
// longer than limit bytes.
func fitComponent(enc, raw string, limit, keep int) string {
	if len(enc) <= limit {
		return enc
	}
	sum := blake3.Sum256([]byte(raw))
	return enc[:keep] + "^" + hex.EncodeToString(sum[:]) + "^" + enc[len(enc)-keep:]
}

// isSafe reports whether b is kept as is by percentEncode.
func isSafe(b byte) bool {
	return 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' ||
		b == '.' || b == '_' || b == '-'
}

const upperHex = "0123456789ABCDEF"

// percentEncode replaces every byte outside [A-Za-z0-9._-] by '%' and its
// two uppercase hex digits.
func percentEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !isSafe(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isSafe(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
		}
	}
	return string(b)
}

// percentDecode inverts percentEncode, accepting only its canonical
// output.
func percentDecode(s string) (string, error) {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isSafe(c):
			b = append(b, c)
		case c == '%':
			if i+2 >= len(s) {
				return "", fmt.Errorf("truncated escape at offset %d", i)
			}
			hi, ok1 := upperHexVal(s[i+1])
			lo, ok2 := upperHexVal(s[i+2])
			if !ok1 || !ok2 {
				return "", fmt.Errorf("bad escape %q at offset %d", s[i:i+3], i)
			}
			d := hi<<4 | lo
			if isSafe(d) || d == 0 {
				return "", fmt.Errorf("non-canonical escape %q at offset %d", s[i:i+3], i)
			}
			b = append(b, d)
			i += 2
		default:
			return "", fmt.Errorf("byte %#02x at offset %d must be escaped", c, i)
		}
	}
	return string(b), nil
}

func upperHexVal(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parseComponent parses "<4 hex>-<encoded or shortened string>". It
// returns the decoded string, or "" and hashed=true for a shortened one.
func parseComponent(c, domain string, limit, keep int) (s string, hashed bool, err error) {
	if len(c) < 6 || c[4] != '-' || !isLowerHex(c[:4]) {
		return "", false, fmt.Errorf("%q does not start with 4 lowercase hex digits and '-'", c)
	}
	body := c[5:]
	if strings.IndexByte(body, '^') >= 0 {
		if len(body) != 2*keep+66 || body[keep] != '^' || body[keep+65] != '^' ||
			!isLowerHex(body[keep+1:keep+65]) {
			return "", false, fmt.Errorf("malformed shortened component %q", c)
		}
		for _, part := range []string{body[:keep], body[keep+66:]} {
			for i := 0; i < len(part); i++ {
				if !isSafe(part[i]) && part[i] != '%' {
					return "", false, fmt.Errorf("malformed shortened component %q", c)
				}
			}
		}
		return "", true, nil
	}
	if len(body) > limit {
		return "", false, fmt.Errorf("component of %d bytes should have been shortened", len(body))
	}
	s, err = percentDecode(body)
	if err != nil {
		return "", false, err
	}
	if got := prefixHash(domain, s); got != c[:4] {
		return "", false, fmt.Errorf("hash prefix %s, want %s", c[:4], got)
	}
	return s, false, nil
}
