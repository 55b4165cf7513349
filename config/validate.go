package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// Validate checks the constraints that the JSON types alone do not
// express, and returns an [*Error] naming the first field that breaks
// one:
//
//   - Tempdir and ReplicationSpoolingDir, when set, are paths without
//     NUL bytes, and ReplicationSpoolingDir is absolute;
//   - ReplicationSpoolingDirPermissions is at most 0o7777;
//   - each target has exactly one kind, and its fields are valid (see
//     the documentation of each target type);
//   - SnapshotLoadingPolicy has a known Kind, and Min and Max are zero
//     unless Kind is "partial";
//   - MaxRequestsPerSecond is zero, or positive and finite.
//
// Validate also normalizes c in place:
//
//   - a relative Tempdir is made absolute against the working
//     directory, as Verneuil reads it relative to the working directory;
//   - the Path of each DirTarget is cleaned with filepath.Clean;
//   - an S3Target without an Endpoint whose Region is not AWS's gets the
//     Region and Endpoint that Verneuil reads in it (see
//     [S3Target.Region]).
//
// It replaces target pointers rather than writing through them. [Parse]
// calls Validate; call it directly for a Config built in code. Names
// that are valid but that most stores refuse are reported by
// [Config.Warnings], not by Validate.
func (c *Config) Validate() error {
	if err := c.validateTempdir(); err != nil {
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
	if m := c.ReplicaMemoryLimit; m != 0 && m < MinReplicaMemoryLimit {
		return &Error{Key: "replica_memory_limit", Msg: fmt.Sprintf(
			"must be at least %d bytes (0 for the default), got %d", MinReplicaMemoryLimit, m)}
	}
	if m := c.ReplicaMaxMappedChunks; m != 0 && m < MinReplicaMappedChunks {
		return &Error{Key: "replica_max_mapped_chunks", Msg: fmt.Sprintf(
			"must be at least %d (0 for the default), got %d", MinReplicaMappedChunks, m)}
	}
	if m := c.CaptureMemoryMiB; m < 0 || m > MaxCaptureMemoryMiB {
		return &Error{Key: "capture_memory_mib", Msg: fmt.Sprintf(
			"must be from 1 to %d MiB (0 for the default), got %d", MaxCaptureMemoryMiB, m)}
	}
	if m := c.ManifestPaceMs; m < 0 || m > MaxManifestPaceMs {
		return &Error{Key: "manifest_pace_ms", Msg: fmt.Sprintf(
			"must be from 1 to %d ms (0 for the default), got %d", MaxManifestPaceMs, m)}
	}
	return nil
}

// validateTempdir checks Tempdir and makes a relative one absolute.
func (c *Config) validateTempdir() error {
	const key = "tempdir"
	if c.Tempdir == "" || filepath.IsAbs(c.Tempdir) {
		return checkPath(key, c.Tempdir, false)
	}
	if strings.ContainsRune(c.Tempdir, 0) {
		return &Error{Key: key, Msg: "must not contain a NUL byte"}
	}
	abs, err := filepath.Abs(c.Tempdir)
	if err != nil {
		return &Error{Key: key, Msg: fmt.Sprintf(
			"relative path %q: cannot find the working directory it is relative to: %v", c.Tempdir, err)}
	}
	c.Tempdir = abs
	return nil
}

// validate checks t, whose path is path, and normalizes it.
func (t *Target) validate(path string) error {
	if kinds := t.kinds(); len(kinds) != 1 {
		return &Error{Key: path, Msg: kindCountMessage(kinds)}
	}
	switch {
	case t.S3 != nil:
		s3, err := t.S3.validate(joinKey(path, kindS3))
		if err != nil {
			return err
		}
		t.S3 = s3
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

// validate checks an S3 target whose path is path. It returns t, or a
// copy of t with the region and endpoint that a Region without an
// Endpoint stands for (see resolveRegion).
func (t *S3Target) validate(path string) (*S3Target, error) {
	if t.Region == "" {
		return nil, &Error{Key: joinKey(path, "region"), Msg: "must not be empty"}
	}
	out := t
	if t.Endpoint != "" {
		if !validRegion(t.Region) {
			return nil, &Error{Key: joinKey(path, "region"), Msg: fmt.Sprintf(
				"invalid region %q: want labels of letters, digits and '-' separated by '.', such as \"us-east-1\"", t.Region)}
		}
		if msg := checkEndpoint(t.Endpoint); msg != "" {
			return nil, &Error{Key: joinKey(path, "endpoint"), Msg: msg}
		}
	} else {
		region, endpoint, msg := resolveRegion(t.Region)
		if msg != "" {
			return nil, &Error{Key: joinKey(path, "region"), Msg: msg}
		}
		if region != t.Region || endpoint != "" {
			c := *t
			c.Region, c.Endpoint = region, endpoint
			out = &c
		}
	}
	if msg := checkBucket(t.ChunkBucket); msg != "" {
		return nil, &Error{Key: joinKey(path, "chunk_bucket"), Msg: msg}
	}
	if msg := checkBucket(t.ManifestBucket); msg != "" {
		return nil, &Error{Key: joinKey(path, "manifest_bucket"), Msg: msg}
	}
	return out, nil
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

// Bucket name lengths: today's rules, and the legacy rules of US East
// (N. Virginia) before March 2018.
const (
	maxBucketName       = 63
	maxLegacyBucketName = 255
)

// checkBucket returns why no S3 store accepts name as a bucket name, or
// "". Such names break even the legacy rules under which US East (N.
// Virginia) created buckets until March 2018, which AWS still serves:
// 3 to 255 characters, of ASCII letters, digits, '.', '-' and '_',
// starting with a letter or digit, and not shaped like an IPv4 address
// (which S3, legacy or not, and MinIO refuse).
func checkBucket(name string) string {
	if n := len(name); n < 3 || n > maxLegacyBucketName {
		return fmt.Sprintf("invalid S3 bucket name %q: must be 3 to 63 characters long (255 for legacy names)", name)
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; !isAlnum(b) && b != '.' && b != '-' && b != '_' {
			return fmt.Sprintf("invalid S3 bucket name %q: only lowercase letters, digits, '.' and '-' are allowed (and, in legacy names, uppercase letters and '_')", name)
		}
	}
	if !isAlnum(name[0]) {
		return fmt.Sprintf("invalid S3 bucket name %q: must start with a letter or digit", name)
	}
	if ipShaped(name) {
		return fmt.Sprintf("invalid S3 bucket name %q: must not be an IP address", name)
	}
	return ""
}

// legacyBucket returns how name, which checkBucket accepts, breaks
// today's rules for bucket names, or "" if it follows them: 3 to 63
// characters, of lowercase letters, digits, '.' and '-', starting and
// ending with a letter or digit, with no '.' next to another '.' or a '-'.
func legacyBucket(name string) string {
	var why []string
	if len(name) > maxBucketName {
		why = append(why, fmt.Sprintf("%d characters", len(name)))
	}
	var upper, under bool
	for i := 0; i < len(name); i++ {
		upper = upper || name[i] >= 'A' && name[i] <= 'Z'
		under = under || name[i] == '_'
	}
	if upper {
		why = append(why, "uppercase letters")
	}
	if under {
		why = append(why, "'_'")
	}
	if last := name[len(name)-1]; last == '.' || last == '-' {
		why = append(why, fmt.Sprintf("a final %q", last))
	}
	for _, bad := range []string{"..", ".-", "-."} {
		if strings.Contains(name, bad) {
			why = append(why, fmt.Sprintf("%q", bad))
		}
	}
	return strings.Join(why, ", ")
}

// ipShaped reports whether name is four dot-separated runs of digits,
// like an IPv4 address.
func ipShaped(name string) bool {
	labels := strings.Split(name, ".")
	if len(labels) != 4 {
		return false
	}
	for _, l := range labels {
		if l == "" || strings.Trim(l, "0123456789") != "" {
			return false
		}
	}
	return true
}

// isAlnum reports whether b is an ASCII letter or digit.
func isAlnum(b byte) bool {
	return isLowerAlnum(b) || b >= 'A' && b <= 'Z'
}

// isLowerAlnum reports whether b is an ASCII lowercase letter or digit.
func isLowerAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9'
}
