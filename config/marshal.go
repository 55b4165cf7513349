package config

import (
	"encoding/json"
)

// wireConfig is the canonical JSON form of a Config. Keys that
// Verneuil always writes are always present; the others are omitted
// when they hold their zero value.
type wireConfig struct {
	MakeDefault            bool            `json:"make_default"`
	Tempdir                string          `json:"tempdir,omitempty"`
	ReplicationSpoolingDir string          `json:"replication_spooling_dir,omitempty"`
	Permissions            uint32          `json:"replication_spooling_dir_permissions,omitempty"`
	ReplicationTargets     []Target        `json:"replication_targets"`
	SnapshotLoadingPolicy  json.RawMessage `json:"snapshot_loading_policy,omitempty"`
	MaxRequestsPerSecond   float64         `json:"max_requests_per_second,omitempty"`
	PackChunks             int             `json:"pack_chunks,omitempty"`
	ReplicaMemoryLimit     int64           `json:"replica_memory_limit,omitempty"`
	ReplicaMaxMappedChunks int             `json:"replica_max_mapped_chunks,omitempty"`
	CaptureMemoryMiB       int             `json:"capture_memory_mib,omitempty"`
	ManifestPaceMs         int             `json:"manifest_pace_ms,omitempty"`
}

// wirePartial is the body of the "partial" loading policy.
type wirePartial struct {
	Min uint32 `json:"min,omitempty"`
	Max uint32 `json:"max,omitempty"`
}

// MarshalJSON writes c as canonical JSON with Verneuil's key names, for
// example to pass the configuration on to a child process. Targets are
// written as {"s3": {...}}, {"dir": {...}} and so on, and the Logger
// is left out. "make_default" and "replication_targets" are always
// written; other keys only when they differ from their zero value.
//
// MarshalJSON does not validate c. For a valid c, [Parse] of the output
// returns a Config equal to c, apart from its Logger.
func (c Config) MarshalJSON() ([]byte, error) {
	w := wireConfig{
		MakeDefault:            c.MakeDefault,
		Tempdir:                c.Tempdir,
		ReplicationSpoolingDir: c.ReplicationSpoolingDir,
		Permissions:            c.ReplicationSpoolingDirPermissions,
		ReplicationTargets:     c.ReplicationTargets,
		MaxRequestsPerSecond:   c.MaxRequestsPerSecond,
		PackChunks:             c.PackChunks,
		ReplicaMemoryLimit:     c.ReplicaMemoryLimit,
		ReplicaMaxMappedChunks: c.ReplicaMaxMappedChunks,
		CaptureMemoryMiB:       c.CaptureMemoryMiB,
		ManifestPaceMs:         c.ManifestPaceMs,
	}
	if w.ReplicationTargets == nil {
		w.ReplicationTargets = []Target{}
	}
	var err error
	if w.SnapshotLoadingPolicy, err = c.SnapshotLoadingPolicy.marshal(); err != nil {
		return nil, err
	}
	return json.Marshal(w)
}

// marshal returns the JSON form of p, or nil when p.Kind is "".
func (p LoadingPolicy) marshal() (json.RawMessage, error) {
	switch p.Kind {
	case "":
		return nil, nil
	case policyEager:
		return json.RawMessage(`{"eager":null}`), nil
	case policyPartial:
		return json.Marshal(map[string]wirePartial{policyPartial: {Min: p.Min, Max: p.Max}})
	}
	// "default", and unknown kinds that Parse will reject.
	return json.Marshal(p.Kind)
}
