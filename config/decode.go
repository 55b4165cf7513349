package config

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// decodeConfig decodes the top-level object, checking keys and types
// but not the constraints that Validate checks.
func decodeConfig(raw json.RawMessage) (Config, error) {
	var c Config
	o, err := decodeStrict(raw, "", topKeys...)
	if err != nil {
		return Config{}, err
	}
	if c.MakeDefault, err = o.boolean("make_default", false); err != nil {
		return Config{}, err
	}
	if c.Tempdir, err = o.str("tempdir", false); err != nil {
		return Config{}, err
	}
	if c.ReplicationSpoolingDir, err = o.str("replication_spooling_dir", false); err != nil {
		return Config{}, err
	}
	if c.ReplicationSpoolingDirPermissions, err = decodePermissions(o); err != nil {
		return Config{}, err
	}
	if c.ReplicationTargets, err = decodeTargets(o); err != nil {
		return Config{}, err
	}
	if c.SnapshotLoadingPolicy, err = decodePolicy(o); err != nil {
		return Config{}, err
	}
	if c.MaxRequestsPerSecond, err = decodeRate(o); err != nil {
		return Config{}, err
	}
	if c.PackChunks, err = decodePackChunks(o); err != nil {
		return Config{}, err
	}
	if c.CaptureMemoryMiB, err = decodeCaptureMemory(o); err != nil {
		return Config{}, err
	}
	var pace uint64
	if pace, err = decodeUint(o, uintKey{key: "manifest_pace_ms", least: 1, most: MaxManifestPaceMs,
		expected: fmt.Sprintf("expected a number of milliseconds from 1 to %d", MaxManifestPaceMs),
		hint:     fmt.Sprintf(" (omit the key for the default of %d)", DefaultManifestPaceMs)}); err != nil {
		return Config{}, err
	}
	c.ManifestPaceMs = int(pace)
	var v uint64
	if v, err = decodeAtLeast(o, "replica_memory_limit", MinReplicaMemoryLimit, 1<<50); err != nil {
		return Config{}, err
	}
	c.ReplicaMemoryLimit = int64(v)
	if v, err = decodeAtLeast(o, "replica_max_mapped_chunks", MinReplicaMappedChunks, 1<<30); err != nil {
		return Config{}, err
	}
	c.ReplicaMaxMappedChunks = int(v)
	return c, nil
}

// uintKey describes an optional integer key and how its errors explain it.
type uintKey struct {
	key         string
	least, most uint64
	kind        string // what a value that is not a number should be; "" means "a number"
	expected    string // what a bad number is told was expected
	hint        string // what follows the bad number in its error
}

// decodeUint decodes k.key, an integer from k.least to k.most; absent is 0.
func decodeUint(o *object, k uintKey) (uint64, error) {
	kind := k.kind
	if kind == "" {
		kind = "a number"
	}
	raw, ok, err := o.number(k.key, kind)
	if !ok || err != nil {
		return 0, err
	}
	v, msg := parseUint(string(raw), k.most)
	if msg != "" || v < k.least {
		return 0, &Error{Key: k.key, Msg: k.expected + ", got " + string(raw) + k.hint}
	}
	return v, nil
}

// decodeCaptureMemory decodes capture_memory_mib.
func decodeCaptureMemory(o *object) (int, error) {
	v, err := decodeUint(o, uintKey{key: "capture_memory_mib", least: 1, most: MaxCaptureMemoryMiB,
		expected: fmt.Sprintf("expected a number of MiB from 1 to %d", MaxCaptureMemoryMiB),
		hint:     fmt.Sprintf(" (omit the key for the default of %d)", DefaultCaptureMemoryMiB)})
	return int(v), err
}

// decodeAtLeast decodes key, an integer from least to most; absent is 0.
func decodeAtLeast(o *object, key string, least, most uint64) (uint64, error) {
	return decodeUint(o, uintKey{key: key, least: least, most: most,
		expected: fmt.Sprintf("expected an integer from %d to %d", least, most),
		hint:     " (omit the key for the default)"})
}

// decodePackChunks decodes pack_chunks.
func decodePackChunks(o *object) (int, error) {
	v, err := decodeUint(o, uintKey{key: "pack_chunks", least: 1, most: MaxPackChunks,
		expected: fmt.Sprintf("expected an integer from 1 (no packs) to %d", MaxPackChunks),
		hint:     fmt.Sprintf(" (omit the key for the default of %d)", DefaultPackChunks)})
	return int(v), err
}

// decodePermissions decodes replication_spooling_dir_permissions.
func decodePermissions(o *object) (uint32, error) {
	const octal = "JSON has no octal: write 448 for 0o700"
	v, err := decodeUint(o, uintKey{key: "replication_spooling_dir_permissions", most: 0o7777,
		kind:     "a number (" + octal + ")",
		expected: "expected an integer from 0 to 4095 (0o7777)",
		hint:     "; " + octal})
	return uint32(v), err
}

// decodeRate decodes max_requests_per_second.
func decodeRate(o *object) (float64, error) {
	const key = "max_requests_per_second"
	raw, ok, err := o.number(key, "a number")
	if !ok || err != nil {
		return 0, err
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsInf(v, 0) {
		return 0, &Error{Key: key, Msg: fmt.Sprintf("%s is out of range", string(raw))}
	}
	if !(v > 0) {
		return 0, &Error{Key: key, Msg: fmt.Sprintf(
			"must be greater than 0, got %s (omit the key for the default of %d per second)",
			string(raw), DefaultMaxRequestsPerSecond)}
	}
	return v, nil
}

// decodeTargets decodes replication_targets. An empty list yields nil.
func decodeTargets(o *object) ([]Target, error) {
	const key = "replication_targets"
	raw, ok, _ := o.get(key, false)
	if !ok {
		return nil, nil
	}
	if jsonType(raw) != "array" {
		return nil, typeError(key, "an array", raw)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, &Error{Key: key, Msg: "invalid JSON: " + err.Error()}
	}
	if len(elems) == 0 {
		return nil, nil
	}
	targets := make([]Target, len(elems))
	for i, elem := range elems {
		t, err := decodeTarget(elem, joinIndex(key, i))
		if err != nil {
			return nil, err
		}
		targets[i] = t
	}
	return targets, nil
}

// decodeTarget decodes one replication target, an object with exactly
// one key naming its kind.
func decodeTarget(raw json.RawMessage, path string) (Target, error) {
	o, err := decodeObject(raw, path)
	if err != nil {
		return Target{}, err
	}
	keys := o.sortedKeys()
	for _, k := range keys {
		known := false
		for _, kind := range targetKinds {
			known = known || k == kind
		}
		if !known {
			return Target{}, &Error{Key: path, Msg: fmt.Sprintf(
				"unknown target kind %q (want one of %s)", k, strings.Join(targetKinds, ", "))}
		}
	}
	if len(keys) != 1 {
		return Target{}, &Error{Key: path, Msg: kindCountMessage(keys)}
	}
	kind := keys[0]
	body, path := o.m[kind], joinKey(path, kind)
	var t Target
	switch kind {
	case kindS3:
		t.S3, err = decodeS3(body, path)
	case kindDir:
		t.Dir, err = decodeDir(body, path)
	case kindLocal:
		t.Local, err = decodeLocal(body, path)
	case kindReadOnly:
		t.ReadOnly, err = decodeReadOnly(body, path)
	}
	if err != nil {
		return Target{}, err
	}
	return t, nil
}

// kindCountMessage says that a target has a number of kinds other than
// one; kinds must be sorted.
func kindCountMessage(kinds []string) string {
	if len(kinds) == 0 {
		return fmt.Sprintf("a target must have exactly one kind, got 0 (want one of %s)",
			strings.Join(targetKinds, ", "))
	}
	return fmt.Sprintf("a target must have exactly one kind, got %d (%s)",
		len(kinds), strings.Join(kinds, ", "))
}

// decodeS3 decodes the body of an "s3" target.
func decodeS3(raw json.RawMessage, path string) (*S3Target, error) {
	o, err := decodeStrict(raw, path, "region", "endpoint", "chunk_bucket", "manifest_bucket",
		"domain_addressing", "create_buckets_on_demand")
	if err != nil {
		return nil, err
	}
	var t S3Target
	if t.Region, err = o.str("region", true); err != nil {
		return nil, err
	}
	if t.Endpoint, err = o.str("endpoint", false); err != nil {
		return nil, err
	}
	if t.ChunkBucket, err = o.str("chunk_bucket", true); err != nil {
		return nil, err
	}
	if t.ManifestBucket, err = o.str("manifest_bucket", true); err != nil {
		return nil, err
	}
	if t.DomainAddressing, err = o.boolean("domain_addressing", true); err != nil {
		return nil, err
	}
	if t.CreateBucketsOnDemand, err = o.boolean("create_buckets_on_demand", false); err != nil {
		return nil, err
	}
	return &t, nil
}

// decodeDir decodes the body of a "dir" target.
func decodeDir(raw json.RawMessage, path string) (*DirTarget, error) {
	o, err := decodeStrict(raw, path, "path")
	if err != nil {
		return nil, err
	}
	var t DirTarget
	if t.Path, err = o.str("path", true); err != nil {
		return nil, err
	}
	return &t, nil
}

// decodeLocal decodes the body of a "local" target.
func decodeLocal(raw json.RawMessage, path string) (*LocalTarget, error) {
	o, err := decodeStrict(raw, path, "directory", "num_shards", "capacity")
	if err != nil {
		return nil, err
	}
	var t LocalTarget
	if t.Directory, t.NumShards, err = o.shardedDir(true); err != nil {
		return nil, err
	}
	if t.Capacity, err = o.uint("capacity", true, MaxLocalCapacity); err != nil {
		return nil, err
	}
	return &t, nil
}

// decodeReadOnly decodes the body of a "read_only" target.
func decodeReadOnly(raw json.RawMessage, path string) (*ReadOnlyTarget, error) {
	o, err := decodeStrict(raw, path, "directory", "num_shards", "append_instance_id")
	if err != nil {
		return nil, err
	}
	var t ReadOnlyTarget
	if t.Directory, t.NumShards, err = o.shardedDir(false); err != nil {
		return nil, err
	}
	if _, set, _ := o.get("append_instance_id", false); set {
		v, err := o.boolean("append_instance_id", false)
		if err != nil {
			return nil, err
		}
		t.AppendInstanceID = &v
	}
	return &t, nil
}

// policyForms describes the accepted forms of snapshot_loading_policy.
const policyForms = `want "default", {"eager":null} or {"partial":{"min":N,"max":M}}`

// decodePolicy decodes snapshot_loading_policy, in any of the forms in
// which Verneuil's serde representation can be written.
func decodePolicy(o *object) (LoadingPolicy, error) {
	const key = "snapshot_loading_policy"
	raw, ok, _ := o.get(key, false)
	if !ok {
		return LoadingPolicy{}, nil
	}
	switch jsonType(raw) {
	case "string":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return LoadingPolicy{}, &Error{Key: key, Msg: "invalid string: " + err.Error()}
		}
		switch s {
		case policyDefault, policyEager:
			return LoadingPolicy{Kind: s}, nil
		case policyPartial:
			return LoadingPolicy{}, &Error{Key: key, Msg: `the "partial" policy must be written as an object: {"partial":{"min":N,"max":M}}`}
		}
		return LoadingPolicy{}, &Error{Key: key, Msg: fmt.Sprintf("unknown policy %q (%s)", s, policyForms)}
	case "object":
	default:
		return LoadingPolicy{}, typeError(key, "a string or an object", raw)
	}
	p, err := decodeObject(raw, key)
	if err != nil {
		return LoadingPolicy{}, err
	}
	keys := p.sortedKeys()
	if len(keys) != 1 {
		return LoadingPolicy{}, &Error{Key: key, Msg: fmt.Sprintf(
			"a policy object must have exactly one key, got %d (%s)", len(keys), policyForms)}
	}
	kind := keys[0]
	path := joinKey(key, kind)
	body := p.m[kind]
	switch kind {
	case policyDefault, policyEager:
		if jsonType(body) != "null" {
			return LoadingPolicy{}, typeError(path, "null", body)
		}
		return LoadingPolicy{Kind: kind}, nil
	case policyPartial:
	default:
		return LoadingPolicy{}, &Error{Key: key, Msg: fmt.Sprintf("unknown policy %q (%s)", kind, policyForms)}
	}
	params, err := decodeStrict(body, path, "min", "max")
	if err != nil {
		return LoadingPolicy{}, err
	}
	lo, err := params.uint("min", false, math.MaxUint32)
	if err != nil {
		return LoadingPolicy{}, err
	}
	hi, err := params.uint("max", false, math.MaxUint32)
	if err != nil {
		return LoadingPolicy{}, err
	}
	return LoadingPolicy{Kind: policyPartial, Min: uint32(lo), Max: uint32(hi)}, nil
}
