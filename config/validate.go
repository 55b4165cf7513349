package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
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
		if c := t.Local.Capacity; c > MaxLocalCapacity {
			return &Error{Key: joinKey(p, "capacity"), Msg: fmt.Sprintf(
				"%d is too large (the maximum is %d)", c, uint64(MaxLocalCapacity))}
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
	if !validRegion(t.Region) {
		return &Error{Key: joinKey(path, "region"), Msg: fmt.Sprintf(
			"invalid region %q: want labels of letters, digits and '-' separated by '.', such as \"us-east-1\"", t.Region)}
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
// URL with a host, a valid port if any, no user information and no query,
// or "". The message never contains user information or query values
// (see redactURL).
func checkEndpoint(endpoint string) string {
	u, err := url.Parse(endpoint)
	switch {
	case err != nil:
		return fmt.Sprintf("invalid URL %q: %s", redactURL(endpoint), urlErrorReason(err))
	case u.User != nil:
		return "must not contain user information; credentials never come from the configuration"
	case u.Scheme == "":
		return fmt.Sprintf("must be an absolute http or https URL, got %q", redactURL(endpoint))
	case u.Scheme != "http" && u.Scheme != "https":
		// Not even the scheme: in "key:secret", "key" is the scheme.
		return "must be an absolute http or https URL (http://HOST or https://HOST), got another scheme"
	case u.Opaque != "":
		return "must have a host (" + u.Scheme + "://HOST), got no '//'"
	case u.Hostname() == "":
		return fmt.Sprintf("must have a host, got %q", redactURL(endpoint))
	case u.RawQuery != "" || u.ForceQuery:
		return fmt.Sprintf("must not have a query, got %q", redactURL(endpoint))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("invalid port %q: want 1 to 65535", p)
		}
	}
	return ""
}

// urlErrorReason says why url.Parse failed, without the URL that
// *url.Error repeats, nor the bad escape that url.EscapeError quotes,
// which may be part of a password.
func urlErrorReason(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ee url.EscapeError
	if errors.As(err, &ee) {
		return "invalid %-escape"
	}
	return err.Error()
}

// redactURL returns raw with what may be a secret replaced by
// "REDACTED": the user information (what comes before an '@' in the
// authority), the value of each query parameter, and the fragment. It
// works on strings that do not parse as URLs too, so that an error
// message can quote any endpoint.
func redactURL(raw string) string {
	const redacted = "REDACTED"
	prefix, rest := "", raw
	if i := strings.Index(rest, "://"); i >= 0 {
		prefix, rest = rest[:i+3], rest[i+3:]
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	auth, tail := rest[:end], rest[end:]
	if at := strings.LastIndexByte(auth, '@'); at >= 0 {
		auth = redacted + auth[at:]
	}
	tail, frag, hasFrag := strings.Cut(tail, "#")
	path, query, hasQuery := strings.Cut(tail, "?")
	var b strings.Builder
	b.WriteString(prefix)
	b.WriteString(auth)
	b.WriteString(path)
	if hasQuery {
		b.WriteByte('?')
		for i, kv := range strings.Split(query, "&") {
			if i > 0 {
				b.WriteByte('&')
			}
			if k, _, ok := strings.Cut(kv, "="); ok {
				b.WriteString(k + "=" + redacted)
			} else if kv != "" {
				b.WriteString(redacted)
			}
		}
	}
	if hasFrag && frag != "" {
		b.WriteString("#" + redacted)
	}
	return b.String()
}

// validRegion reports whether region is a host name, as the AWS SDK
// requires before it sends a request: labels of 1 to 63 letters, digits
// and '-', neither first nor last, separated by '.'.
func validRegion(region string) bool {
	for _, label := range strings.Split(region, ".") {
		if n := len(label); n == 0 || n > 63 || label[0] == '-' || label[n-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if b := label[i]; !isLowerAlnum(b) && !(b >= 'A' && b <= 'Z') && b != '-' {
				return false
			}
		}
	}
	return true
}

// checkBucket returns why name is not a valid S3 bucket name, or "":
// 3 to 63 characters, lowercase letters, digits, '.' and '-', starting
// and ending with a letter or digit, with no '.' next to another '.' or a
// '-', and not an IP address (S3 and MinIO refuse those).
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
	for _, bad := range []string{"..", ".-", "-."} {
		if strings.Contains(name, bad) {
			return fmt.Sprintf("invalid S3 bucket name %q: must not contain %q", name, bad)
		}
	}
	if net.ParseIP(name) != nil {
		return fmt.Sprintf("invalid S3 bucket name %q: must not be an IP address", name)
	}
	return ""
}

// isLowerAlnum reports whether b is an ASCII lowercase letter or digit.
func isLowerAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9'
}
