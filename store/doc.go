// Package store is where Boule's snapshots live. It owns:
//
//   - the narrow [Store] interface every backend implements
//     (content-addressed chunk and pack blobs, manifest blobs by key, their
//     versions), [Conditional], the optional puts of a manifest on the
//     condition that the stored one is still the one last seen, and
//     [Cache], the stores that hold chunks only;
//   - its errors: [Error], the sentinels [ErrNotFound], [ErrCorrupt],
//     [ErrPermanent], [ErrPrecondition] and [ErrUnsupported], and
//     [IsRetryable];
//   - the object keys ([ChunkKey], [PackKey], [ManifestKey]) and the blob
//     and pack codecs ([EncodeBlob], [DecodeChunk], [EncodeManifestBlob],
//     [DecodeManifestBlob], [EncodePack], [DecodePackMember]);
//   - [Limited], the rate-limited, retrying and counting wrapper every
//     caller goes through;
//   - [Open], which turns the configuration's replication targets into
//     stores through the backends that registered ([RegisterBackend]);
//   - reading from several stores in turn ([FetchManifest], [FetchChunk],
//     [FetchPack]);
//   - how readable what a store writes to files may be ([WithSourcePerm],
//     [FilePerm], [DirPerm]).
//
// The object keys and blob encodings are a public contract, specified in
// doc/FORMAT.md, "Store layout and object keys"; this package is its
// reference implementation and the only place that spells them.
//
// The backends are subpackages, each registering itself when imported:
// store/s3 (S3 and S3-compatible services), store/dir (a local
// directory), store/cache (the local chunk cache). store/storetest holds
// the conformance suite every backend runs, and a fake for unit tests.
//
// It must not touch what is particular to a backend (an S3 client, a
// directory layout, a cache's eviction), and it knows nothing of SQLite,
// the spool or the uploader: of this module it imports config and
// manifest only.
package store
