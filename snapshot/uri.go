package snapshot

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// Scheme prefixes the names of replicas located by host and path:
// "boule://HOST/abs/path/to.db". An empty HOST means this machine.
const Scheme = "boule://"

// VerneuilScheme is Verneuil's name for Scheme, accepted wherever Scheme
// is so that its users' names keep working: "verneuil://HOST/abs/path"
// names the same replica as "boule://HOST/abs/path".
const VerneuilScheme = "verneuil://"

// CutScheme returns name without its Scheme or VerneuilScheme prefix,
// and whether it had one.
func CutScheme(name string) (rest string, ok bool) {
	if rest, ok := strings.CutPrefix(name, Scheme); ok {
		return rest, true
	}
	return strings.CutPrefix(name, VerneuilScheme)
}

// Limits on a boule:// name, as on the manifest fields they select.
const (
	maxHostname = 255
	maxPath     = 4096
)

// ErrBadName is wrapped by the errors of ParseName.
var ErrBadName = errors.New("snapshot: bad replica name")

// Source is what a replica is opened from: either the newest manifest of
// a database, by host and path, or one manifest file.
type Source struct {
	// Hostname and Path locate the database's newest manifest in the
	// stores. Hostname is empty for "this machine" until resolved.
	Hostname, Path string
	// ManifestFile, when set, is the local path of a manifest file; the
	// replica is exactly that snapshot.
	ManifestFile string
}

// String returns the name that ParseName parses into s.
func (s Source) String() string {
	if s.ManifestFile != "" {
		return s.ManifestFile
	}
	return Scheme + s.Hostname + s.Path
}

// ParseName parses the file name SQLite passes to the boule_snapshot VFS:
// "boule://HOST/abs/path" (or "verneuil://HOST/abs/path") or the path of
// a manifest file. It rejects names
// that could not name a replicated database: relative, "." or ".."
// components, repeated slashes, NUL and other control characters, invalid
// UTF-8, and over-long hosts or paths.
func ParseName(name string) (Source, error) {
	if name == "" {
		return Source{}, fmt.Errorf("%w: empty name", ErrBadName)
	}
	if !utf8.ValidString(name) {
		return Source{}, fmt.Errorf("%w: %q is not valid UTF-8", ErrBadName, name)
	}
	if i := strings.IndexFunc(name, isControl); i >= 0 {
		return Source{}, fmt.Errorf("%w: %q has a control character at byte %d", ErrBadName, name, i)
	}
	rest, ok := CutScheme(name)
	if !ok {
		if len(name) > maxPath {
			return Source{}, fmt.Errorf("%w: manifest file name is %d bytes, more than %d", ErrBadName, len(name), maxPath)
		}
		return Source{ManifestFile: name}, nil
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return Source{}, fmt.Errorf("%w: %q has no path after the host; want %sHOST/abs/path", ErrBadName, name, Scheme)
	}
	host, p := rest[:slash], rest[slash:]
	if err := CheckHostname(host); err != nil {
		return Source{}, err
	}
	if err := CheckPath(p); err != nil {
		return Source{}, err
	}
	return Source{Hostname: host, Path: p}, nil
}

// CheckHostname reports whether h can be a replicated database's host
// name; empty means this machine.
func CheckHostname(h string) error {
	switch {
	case len(h) > maxHostname:
		return fmt.Errorf("%w: host name is %d bytes, more than %d", ErrBadName, len(h), maxHostname)
	case strings.ContainsAny(h, "/\\\x00"):
		return fmt.Errorf("%w: host name %q has a slash, backslash or NUL", ErrBadName, h)
	case h == "." || h == "..":
		return fmt.Errorf("%w: host name %q", ErrBadName, h)
	case strings.IndexFunc(h, isControl) >= 0:
		return fmt.Errorf("%w: host name %q has a control character", ErrBadName, h)
	}
	return nil
}

// CheckPath reports whether p can be a replicated database's path: an
// absolute, clean path of valid UTF-8 with no control characters.
func CheckPath(p string) error {
	switch {
	case p == "" || p[0] != '/':
		return fmt.Errorf("%w: path %q is not absolute", ErrBadName, p)
	case len(p) > maxPath:
		return fmt.Errorf("%w: path is %d bytes, more than %d", ErrBadName, len(p), maxPath)
	case !utf8.ValidString(p):
		return fmt.Errorf("%w: path %q is not valid UTF-8", ErrBadName, p)
	case strings.IndexFunc(p, isControl) >= 0:
		return fmt.Errorf("%w: path %q has a control character", ErrBadName, p)
	case p == "/" || path.Clean(p) != p:
		return fmt.Errorf("%w: path %q is not a clean file path (no \".\", \"..\", \"//\" or trailing \"/\")", ErrBadName, p)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
