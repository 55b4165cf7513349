package store

import (
	"context"
	"time"

	"github.com/boule-vfs/boule/manifest"
)

// A Store holds content-addressed chunk blobs and manifest blobs.
//
// Errors wrap ErrNotFound, ErrCorrupt or ErrPermanent when one applies;
// [IsRetryable] tells transient failures apart. Implementations are safe
// for concurrent use.
type Store interface {
	// PutChunk stores data, the raw bytes of the chunk with fingerprint
	// fp, under ChunkKey(fp). The store encodes it (see EncodeBlob).
	PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error

	// GetChunk returns the raw bytes of the chunk with fingerprint fp,
	// verified: they hash to fp, otherwise the error wraps ErrCorrupt.
	GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error)

	// TouchChunk refreshes the chunk's modification time, so that
	// lifecycle rules that expire unmodified chunks spare it. It returns
	// ErrNotFound if the chunk is missing.
	TouchChunk(ctx context.Context, fp manifest.Fingerprint) error

	// PutPack stores blob, a pack made by EncodePack, under PackKey(id)
	// in the chunk bucket, as is (its members are compressed already).
	PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error

	// GetPack returns the bytes of pack id, as stored. Callers verify
	// each chunk they take from it (DecodePackMember). Caches return
	// ErrNotFound: they hold chunks only.
	GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error)

	// TouchPack refreshes the pack's modification time, as TouchChunk
	// does for a chunk.
	TouchPack(ctx context.Context, id manifest.Fingerprint) error

	// PutBase stores blob, the encoding of a manifest base (see
	// manifest.NewBase), under BaseKey(id) in the chunk bucket, as is.
	// Bases are immutable: id is the BLAKE3-256 of blob.
	PutBase(ctx context.Context, id manifest.Fingerprint, blob []byte) error

	// GetBase returns the bytes of base id, as stored, reading no more
	// than size bytes, the length the head that names it declares: a
	// longer object is an error wrapping ErrCorrupt. Callers check the
	// bytes against id (manifest.Head.DecodeBase). Caches return
	// ErrNotFound.
	GetBase(ctx context.Context, id manifest.Fingerprint, size int64) ([]byte, error)

	// TouchBase refreshes the base's modification time, as TouchChunk
	// does for a chunk.
	TouchBase(ctx context.Context, id manifest.Fingerprint) error

	// PutManifest stores data, an encoded manifest (see
	// manifest.Manifest.MarshalBinary), under key, a key returned by
	// ManifestKey. The store may compress it.
	PutManifest(ctx context.Context, key string, data []byte) error

	// GetManifest returns the latest encoded manifest stored under key,
	// decompressed; pass it to manifest.Decode, whose checksum is the
	// integrity check. It returns ErrNotFound if there is none.
	GetManifest(ctx context.Context, key string) ([]byte, error)

	// ListManifests lists the manifests whose keys start with prefix
	// (such as a HostPrefix), sorted by key.
	ListManifests(ctx context.Context, prefix string) ([]ManifestInfo, error)

	// ManifestVersions lists the kept versions of the manifest under key,
	// newest first. Without versioning it lists the latest only. It
	// returns ErrNotFound if there are none.
	ManifestVersions(ctx context.Context, key string) ([]Version, error)

	// GetManifestVersion returns one version of the manifest under key,
	// as GetManifest does for the latest.
	GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error)

	// String describes the store, such as
	// "s3://chunk-bucket,manifest-bucket@127.0.0.1:9000" or "dir:/path".
	// It never includes credentials.
	String() string
}

// Conditional is the capability of a store that can put a manifest on a
// condition: only if the manifest stored under its key is still the one
// the caller last saw, named by its entity tag (an S3 ETag). A delayed or
// retried put then cannot land over a newer manifest, and the uploader
// need not space its manifests out in time to keep the store from going
// backwards (doc/DESIGN.md, "The uploader").
//
// An entity tag is opaque: compare it only for equality, and pass it
// back as it was returned.
type Conditional interface {
	// ConditionalPuts reports whether the store means to honour the
	// conditions of PutManifestIf. When it does not, PutManifestIf
	// returns an error wrapping ErrUnsupported.
	ConditionalPuts() bool

	// PutManifestIf stores data under key, as PutManifest does, if the
	// manifest stored there now has entity tag etag, or, when etag is
	// "", if there is none; it returns the entity tag of what it stored.
	// When the condition does not hold it stores nothing and returns an
	// error wrapping ErrPrecondition. A retried put whose first attempt
	// landed fails so too: compare what is stored (GetManifestTag).
	PutManifestIf(ctx context.Context, key string, data []byte, etag string) (string, error)

	// GetManifestTag returns what GetManifest returns, with the entity
	// tag of the manifest it read.
	GetManifestTag(ctx context.Context, key string) ([]byte, string, error)
}

// ConditionalPuts reports whether s is a Conditional store that honours
// the conditions of PutManifestIf, alone or behind a Limited.
func ConditionalPuts(s Store) bool {
	c, ok := s.(Conditional)
	return ok && c.ConditionalPuts()
}

// A Cache is a store that holds chunks one file each and never packs or
// manifests, such as the local chunk cache (package store/cache).
type Cache interface {
	Store
	// ChunkCache marks the store as a cache; it does nothing.
	ChunkCache()
}

// IsCache reports whether s is a chunk cache (a Cache, alone or behind a
// Limited).
func IsCache(s Store) bool {
	for {
		switch v := s.(type) {
		case Cache:
			return true
		case *Limited:
			s = v.s
		default:
			return false
		}
	}
}

// ManifestInfo describes one stored manifest.
type ManifestInfo struct {
	// Key is the manifest's key.
	Key string
	// LastModified is when the latest version was stored.
	LastModified time.Time
	// Size is the size in bytes of the stored blob, which may be
	// compressed.
	Size int64
}

// Version describes one kept version of a manifest.
type Version struct {
	// ID identifies the version for GetManifestVersion: an S3 version ID
	// ("null" for an object stored while versioning was off), or, in a
	// directory store, the version's 20-digit file name.
	ID string
	// LastModified is when the version was stored.
	LastModified time.Time
	// IsLatest reports whether this version is the one GetManifest
	// returns.
	IsLatest bool
}
