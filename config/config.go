package config

import (
	"log/slog"
	"os"
	"time"
)

// EnvVar is the environment variable from which entry points read the
// configuration and hand its value to [Load].
const EnvVar = "BOULE_CONFIG"

// LegacyEnvVar is Verneuil's environment variable for the same
// configuration. Entry points read it when [EnvVar] is unset or blank
// (see [FromEnv]), so that Verneuil's users can move over without
// renaming it.
const LegacyEnvVar = "VERNEUIL_CONFIG"

// DefaultMaxRequestsPerSecond is the rate of API calls per second
// allowed to each replication target when
// [Config.MaxRequestsPerSecond] is zero. It matches the rate that
// Verneuil hard-codes.
const DefaultMaxRequestsPerSecond = 30

// MinReplicaMemoryLimit and MinReplicaMappedChunks are the least values of
// [Config.ReplicaMemoryLimit] and [Config.ReplicaMaxMappedChunks] (other
// than 0, the default): 2 MiB, and 16 chunks.
const (
	MinReplicaMemoryLimit  = 2 << 20
	MinReplicaMappedChunks = 16
)

// DefaultPackChunks and MaxPackChunks bound [Config.PackChunks]: packs
// of 64 chunks are 4 MiB; a manifest allows packs of up to 64 MiB.
const (
	DefaultPackChunks = 64
	MaxPackChunks     = 1024
)

// DefaultCaptureMemoryMiB and MaxCaptureMemoryMiB bound
// [Config.CaptureMemoryMiB].
const (
	DefaultCaptureMemoryMiB = 64
	MaxCaptureMemoryMiB     = 1 << 16
)

// DefaultManifestPaceMs and MaxManifestPaceMs bound
// [Config.ManifestPaceMs].
const (
	DefaultManifestPaceMs = 500
	MaxManifestPaceMs     = 60_000
)

// MaxLocalCapacity bounds [LocalTarget.Capacity]: 2^47 chunks of 64 KiB
// are 8 EiB, and the size in bytes still fits an int64.
const MaxLocalCapacity = 1 << 47

// DefaultBurst is the number of API calls that a replication target may
// make at once before the rate limit applies. It matches Verneuil's.
const DefaultBurst = 100

// Config is Boule's configuration. The zero Config is valid: it
// registers Boule without making it the default VFS, uses SQLite's
// temporary directory, and does not replicate.
//
// The JSON key of each field is given in its comment.
type Config struct {
	// MakeDefault ("make_default") registers Boule as the process's
	// default VFS.
	MakeDefault bool

	// Tempdir ("tempdir") is the directory for temporary files; ""
	// means SQLite's default. A relative path is relative to the
	// working directory: Validate makes it absolute.
	Tempdir string

	// ReplicationSpoolingDir ("replication_spooling_dir") is the
	// absolute path of the directory where changes are spooled before
	// they are copied to the replication targets. "" disables
	// replication: the VFS then behaves exactly like SQLite's unix VFS.
	ReplicationSpoolingDir string

	// ReplicationSpoolingDirPermissions
	// ("replication_spooling_dir_permissions") are the Unix permission
	// bits, at most 0o7777, given to the spooling directory when Boule
	// creates it. They are ORed with 0o700; zero means 0o700. JSON has
	// no octal literals, so 0o755 is written 493. See
	// [Config.Permissions].
	ReplicationSpoolingDirPermissions uint32

	// ReplicationTargets ("replication_targets") lists where spooled
	// data is copied to, and where snapshots are read from.
	ReplicationTargets []Target

	// SnapshotLoadingPolicy ("snapshot_loading_policy") says how much
	// of a snapshot is fetched before it is opened.
	SnapshotLoadingPolicy LoadingPolicy

	// MaxRequestsPerSecond ("max_requests_per_second") limits the API
	// calls made to each replication target, with bursts of up to
	// [DefaultBurst]. Zero means [DefaultMaxRequestsPerSecond]; any
	// other value must be positive and finite. This key is Boule's
	// addition: Verneuil hard-codes the rate. See [Config.Rate].
	MaxRequestsPerSecond float64

	// PackChunks ("pack_chunks") is the most chunks the uploader puts
	// in one pack object, from 1 to [MaxPackChunks]. Zero means
	// [DefaultPackChunks]; 1 stores every chunk as an object of its own
	// and writes manifests without a pack table, which readers older
	// than packs can read. This key is Boule's addition.
	PackChunks int

	// ReplicaMemoryLimit ("replica_memory_limit") bounds, in bytes, the
	// anonymous memory in which read replicas (boule_snapshot) keep
	// chunks, whatever the databases' sizes: copies of chunks get a quarter,
	// the buffers packs are fetched into (outside the Go heap) an eighth,
	// and the rest is for the Go heap's work. Chunks mapped from
	// the chunk cache's files are not counted: they are file-backed, and
	// bounded by ReplicaMaxMappedChunks. Zero means 256 MiB; otherwise
	// at least [MinReplicaMemoryLimit]. This key is Boule's addition.
	ReplicaMemoryLimit int64

	// ReplicaMaxMappedChunks ("replica_max_mapped_chunks") bounds the
	// chunks of 64 KiB that read replicas hold at once, mapped or
	// copied; past it (or past ReplicaMemoryLimit) the least recently
	// read are let go and read again from the chunk cache when needed.
	// Zero means 32768 (2 GiB), or half of vm.max_map_count if less;
	// otherwise at least [MinReplicaMappedChunks]. This key is Boule's
	// addition.
	ReplicaMaxMappedChunks int

	// CaptureMemoryMiB ("capture_memory_mib") bounds, in MiB per
	// process, the data that commits have copied into memory and that
	// the spool's persisters have not staged yet. A commit that would go
	// over it waits for them; one larger than it on its own is staged
	// during the commit instead. Zero means [DefaultCaptureMemoryMiB];
	// at most [MaxCaptureMemoryMiB]. This key is Boule's addition.
	CaptureMemoryMiB int

	// ManifestPaceMs ("manifest_pace_ms") is the least time, in
	// milliseconds, between two uploads of one database's manifest to
	// targets that honour conditional puts (If-Match): the replication
	// lag's floor, traded against requests. Targets without them keep
	// 1,100 ms or this, whichever is longer (doc/OPERATIONS.md,
	// "Manifest pacing"). Zero means [DefaultManifestPaceMs]; at most
	// [MaxManifestPaceMs]. This key is Boule's addition.
	ManifestPaceMs int

	// Logger receives Boule's log records. It is not read from JSON;
	// nil means slog.Default(), so that what stops replication reaches
	// the stderr of a program that configured nothing.
	Logger *slog.Logger `json:"-"`
}

// Target is one replication target. Exactly one of its fields is
// non-nil in a valid Target; its JSON form is an object with exactly
// one key, the target's kind, such as {"s3": {...}}.
type Target struct {
	// S3 ("s3") replicates to a pair of S3-compatible buckets.
	S3 *S3Target `json:"s3,omitempty"`
	// Dir ("dir") replicates to a directory of the local file system.
	Dir *DirTarget `json:"dir,omitempty"`
	// Local ("local") is a local cache of chunks, shared between
	// processes, that is consulted before the remote targets.
	Local *LocalTarget `json:"local,omitempty"`
	// ReadOnly ("read_only") is a directory that is read from but
	// never written to.
	ReadOnly *ReadOnlyTarget `json:"read_only,omitempty"`
}

// S3Target is a replication target in S3 or an S3-compatible store.
// Credentials are not part of it: they come only from the AWS SDK's
// default chain (environment, shared config files, instance role).
type S3Target struct {
	// Region ("region", required) is the store's region, such as
	// "us-east-1", or a name like "minio" for a custom endpoint.
	// Without an Endpoint, a region that is not AWS's is read as
	// Verneuil reads it: "name.domain" is region "name" at
	// https://domain, a bare "name" is region "name" at https://name,
	// and the few other providers' regions that Verneuil knows (such as
	// "nyc3") are at their provider's endpoint. Validate rewrites Region
	// and Endpoint to that meaning.
	Region string `json:"region"`

	// Endpoint ("endpoint", optional) overrides the store's URL. When
	// set it must be an absolute http or https URL with a host and no
	// user information, such as "http://127.0.0.1:9000".
	Endpoint string `json:"endpoint,omitempty"`

	// ChunkBucket ("chunk_bucket", required) is the name of the bucket
	// for content-addressed chunks. Names that only S3's legacy rules
	// allow (such as "verneuil_chunks") are valid; see
	// [Config.Warnings].
	ChunkBucket string `json:"chunk_bucket"`

	// ManifestBucket ("manifest_bucket", required) is the name of the
	// bucket for manifests.
	ManifestBucket string `json:"manifest_bucket"`

	// DomainAddressing ("domain_addressing", required) selects
	// virtual-hosted-style requests (bucket.host/key) when true, and
	// path-style requests (host/bucket/key) when false.
	DomainAddressing bool `json:"domain_addressing"`

	// CreateBucketsOnDemand ("create_buckets_on_demand", default
	// false) creates missing buckets, with private access.
	CreateBucketsOnDemand bool `json:"create_buckets_on_demand"`
}

// DirTarget is a replication target in a directory of the local file
// system, laid out like a bucket.
type DirTarget struct {
	// Path ("path", required) is the absolute path of the directory.
	// Validate cleans it with filepath.Clean.
	Path string `json:"path"`
}

// LocalTarget is a local, size-bounded cache of chunks that is
// consulted before the remote targets and filled from them.
type LocalTarget struct {
	// Directory ("directory", required) is the absolute path of the
	// cache directory.
	Directory string `json:"directory"`
	// NumShards ("num_shards", required) is the number of
	// subdirectories the cache is split into; at least 1.
	NumShards uint32 `json:"num_shards"`
	// Capacity ("capacity", required) is the cache's size in chunks of
	// 64 KiB; at least 1 and at most [MaxLocalCapacity].
	Capacity uint64 `json:"capacity"`
}

// ReadOnlyTarget is a directory of chunks that is read from but never
// written to or evicted from, for example a pre-populated cache.
type ReadOnlyTarget struct {
	// Directory ("directory", required) is the absolute path of the
	// directory.
	Directory string `json:"directory"`
	// NumShards ("num_shards", default 0) is the number of
	// subdirectories the directory is split into; 0 means a plain
	// directory.
	NumShards uint32 `json:"num_shards"`
	// AppendInstanceID ("append_instance_id", default true) is
	// Verneuil's: true reads the directory laid out as a "local"
	// target with the same Directory writes it, false reads Directory
	// as given. Boule's "local" caches are not per boot (Verneuil's
	// are kept under Directory/<boot id>), so both read Directory
	// itself. Nil means the default; MarshalJSON writes it only when
	// it is set.
	AppendInstanceID *bool `json:"append_instance_id,omitempty"`
}

// LoadingPolicy says how much of a snapshot is fetched before it is
// opened; the rest is fetched on demand. Its JSON forms follow
// Verneuil's: "default", {"eager": null} (or "eager") and
// {"partial": {"min": N, "max": M}}, where min and max are optional.
type LoadingPolicy struct {
	// Kind is "default" or "" (let Boule decide), "eager" (fetch
	// everything) or "partial" (fetch between Min and Max chunks).
	Kind string
	// Min is the least number of chunks fetched up front by the
	// "partial" policy; 0 means the implementation's default.
	Min uint32
	// Max is the most number of chunks fetched up front by the
	// "partial" policy; 0 means the implementation's default. A Max
	// below Min is raised to Min.
	Max uint32
}

// Target kinds, as used in JSON and returned by [Target.Kind].
const (
	kindS3       = "s3"
	kindDir      = "dir"
	kindLocal    = "local"
	kindReadOnly = "read_only"
)

// Loading policy kinds, as stored in [LoadingPolicy.Kind].
const (
	policyDefault = "default"
	policyEager   = "eager"
	policyPartial = "partial"
)

// Kind returns the kind of t: "s3", "dir", "local" or "read_only". If
// more than one field is set (t is then invalid) it returns the first
// of them in that order, and "" if none is.
func (t Target) Kind() string {
	switch {
	case t.S3 != nil:
		return kindS3
	case t.Dir != nil:
		return kindDir
	case t.Local != nil:
		return kindLocal
	case t.ReadOnly != nil:
		return kindReadOnly
	}
	return ""
}

// kinds returns the kinds set in t, sorted by name.
func (t Target) kinds() []string {
	var out []string
	if t.Dir != nil {
		out = append(out, kindDir)
	}
	if t.Local != nil {
		out = append(out, kindLocal)
	}
	if t.ReadOnly != nil {
		out = append(out, kindReadOnly)
	}
	if t.S3 != nil {
		out = append(out, kindS3)
	}
	return out
}

// Permissions returns the mode with which the spooling directory is
// created: ReplicationSpoolingDirPermissions ORed with 0o700, keeping
// only the permission bits (0o777).
func (c Config) Permissions() os.FileMode {
	return os.FileMode((c.ReplicationSpoolingDirPermissions | 0o700) & 0o777)
}

// ManifestPace returns ManifestPaceMs as a duration, or
// [DefaultManifestPaceMs] when that is zero.
func (c Config) ManifestPace() time.Duration {
	if c.ManifestPaceMs == 0 {
		return DefaultManifestPaceMs * time.Millisecond
	}
	return time.Duration(c.ManifestPaceMs) * time.Millisecond
}

// Rate returns the rate limit in API calls per second for each
// replication target: MaxRequestsPerSecond, or
// [DefaultMaxRequestsPerSecond] when that is zero.
func (c Config) Rate() float64 {
	if c.MaxRequestsPerSecond == 0 {
		return DefaultMaxRequestsPerSecond
	}
	return c.MaxRequestsPerSecond
}
