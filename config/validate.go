package config

import (
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"strings"
)

// Validate checks the constraints that the JSON types alone do not
// express, and returns an [*Error] naming the first field that breaks
// one:
//
//   - Tempdir and ReplicationSpoolingDir, when set, are absolute paths
//     without NUL bytes;
//   - ReplicationSpoolingDirPermissions is at most 0o7777;
//   - each target has exactly one kind, and its fields are valid (see
//     the documentation of each target type);
//   - SnapshotLoadingPolicy has a known Kind, and Min and Max are zero
//     unless Kind is "partial";
//   - MaxRequestsPerSecond is zero, or positive and finite.
//
// Validate also normalizes c in place: it cleans the Path of each
// DirTarget with filepath.Clean, replacing the DirTarget pointer
// rather than writing through it. [Parse] calls Validate; call it
// directly for a Config built in code.
func (c *Config) Validate() error {
	if err := checkPath("tempdir", c.Tempdir, false); err != nil {
		return err
	}
	if err := checkPath("replication_spooling_dir", c.ReplicationSpoolingDir, false); err != nil {
		return err
	}
	if p := c.ReplicationSpoolingDirPermissions; p > 0o7777 {
		return &Error{Key: "replication_spooling_dir_permissions", Msg: fmt.Sprintf(
			"%d (%#o) is more than 4095 (0o7777)", p, p)}
	}
	for i := range c.ReplicationTargets {
		if err := c.ReplicationTargets[i].validate(joinIndex("replication_targets", i)); err != nil {
			return err
		}
	}
	if err := c.SnapshotLoadingPolicy.validate("snapshot_loading_policy"); err != nil {
		return err
	}
	if r := c.MaxRequestsPerSecond; r != 0 && (!(r > 0) || math.IsInf(r, 1)) {
		return &Error{Key: "max_requests_per_second", Msg: fmt.Sprintf(
			"must be positive and finite, got %v", r)}
	}
	if p := c.PackChunks; p < 0 || p > MaxPackChunks {
		return &Error{Key: "pack_chunks", Msg: fmt.Sprintf(
			"must be from 1 to %d (0 for the default), got %d", MaxPackChunks, p)}
	}
	return nil
}

// validate checks t, whose path is path, and cleans a DirTarget's Path.
func (t *Target) validate(path string) error {
	if kinds := t.kinds(); len(kinds) != 1 {
		return &Error{Key: path, Msg: kindCountMessage(kinds)}
	}
	switch {
	case t.S3 != nil:
		return t.S3.validate(joinKey(path, kindS3))
	case t.Dir != nil:
		p := joinKey(path, kindDir)
		if err := checkPath(joinKey(p, "path"), t.Dir.Path, true); err != nil {
			return err
		}
		if clean := filepath.Clean(t.Dir.Path); clean != t.Dir.Path {
			t.Dir = &DirTarget{Path: clean}
		}
	case t.Local != nil:
		p := joinKey(path, kindLocal)
		if err := checkPath(joinKey(p, "directory"), t.Local.Directory, true); err != nil {
			return err
		}
		if t.Local.NumShards < 1 {
			return &Error{Key: joinKey(p, "num_shards"), Msg: "must be at least 1, got 0"}
		}
		if t.Local.Capacity < 1 {
			return &Error{Key: joinKey(p, "capacity"), Msg: "must be at least 1 (chunk of 64 KiB), got 0"}
		}
	case t.ReadOnly != nil:
		p := joinKey(path, kindReadOnly)
		return checkPath(joinKey(p, "directory"), t.ReadOnly.Directory, true)
	}
	return nil
}

// validate checks an S3 target whose path is path.
func (t *S3Target) validate(path string) error {
	if t.Region == "" {
		return &Error{Key: joinKey(path, "region"), Msg: "must not be empty"}
	}
	if t.Endpoint != "" {
		if msg := checkEndpoint(t.Endpoint); msg != "" {
			return &Error{Key: joinKey(path, "endpoint"), Msg: msg}
		}
	}
	if msg := checkBucket(t.ChunkBucket); msg != "" {
		return &Error{Key: joinKey(path, "chunk_bucket"), Msg: msg}
	}
	if msg := checkBucket(t.ManifestBucket); msg != "" {
		return &Error{Key: joinKey(path, "manifest_bucket"), Msg: msg}
	}
	return nil
}

// validate checks a loading policy whose path is path.
func (p LoadingPolicy) validate(path string) error {
	switch p.Kind {
	case "", policyDefault, policyEager:
		if p.Min != 0 || p.Max != 0 {
			return &Error{Key: path, Msg: fmt.Sprintf(
				`min and max are only allowed with the "partial" policy, not %q`, p.Kind)}
		}
	case policyPartial:
	default:
		return &Error{Key: path, Msg: fmt.Sprintf(
			`unknown policy %q (want "default", "eager" or "partial")`, p.Kind)}
	}
	return nil
}

// checkPath checks that p is an absolute path without NUL bytes. An
// empty p is an error only if required.
func checkPath(key, p string, required bool) error {
	switch {
	case p == "" && !required:
		return nil
	case p == "":
		return &Error{Key: key, Msg: "must be an absolute path, got an empty string"}
	case strings.ContainsRune(p, 0):
		return &Error{Key: key, Msg: "must not contain a NUL byte"}
	case !filepath.IsAbs(p):
		return &Error{Key: key, Msg: fmt.Sprintf("must be an absolute path, got %q", p)}
	}
	return nil
}

// checkEndpoint returns why endpoint is not an absolute http or https
// URL with a host and no user information, or "".
func checkEndpoint(endpoint string) string {
	u, err := url.Parse(endpoint)
	switch {
	case err != nil:
		return fmt.Sprintf("invalid URL %q: %v", endpoint, unwrapURLError(err))
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("must be an absolute http or https URL, got %q", endpoint)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Sprintf("must have a host, got %q", endpoint)
	case u.User != nil:
		return "must not contain user information; credentials never come from the configuration"
	}
	return ""
}

// unwrapURLError drops the operation and URL that *url.Error repeats.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// checkBucket returns why name is not a valid S3 bucket name, or "":
// 3 to 63 characters, lowercase letters, digits, '.' and '-', starting
// and ending with a letter or digit.
func checkBucket(name string) string {
	if n := len(name); n < 3 || n > 63 {
		return fmt.Sprintf("invalid S3 bucket name %q: must be 3 to 63 characters long", name)
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; !isLowerAlnum(b) && b != '.' && b != '-' {
			return fmt.Sprintf("invalid S3 bucket name %q: only lowercase letters, digits, '.' and '-' are allowed", name)
		}
	}
	if !isLowerAlnum(name[0]) || !isLowerAlnum(name[len(name)-1]) {
		return fmt.Sprintf("invalid S3 bucket name %q: must start and end with a lowercase letter or digit", name)
	}
	return ""
}

// isLowerAlnum reports whether b is an ASCII lowercase letter or digit.
func isLowerAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9'
}
