package spool

// The names of a database's spool directory. They are spelled here and
// nowhere else: other packages go through this package's API
// (doc/FORMAT.md, "Spool layout", describes them for tools).
const (
	sourceFile    = "source"        // the absolute source path
	markerFile    = "txn"           // the transaction marker (marker.go)
	stagingDir    = "staging"       // the current snapshot
	manifestFile  = "manifest"      // a snapshot's manifest, in staging/ and in each handed-over snapshot
	basePrefix    = "base."         // base.<ID>: the base a head manifest is over, beside it (head.go), in staging/ and beside uploaded
	chunksDir     = "chunks"        // a snapshot's chunk files, by fingerprint
	readyDir      = "ready"         // a snapshot published for upload
	consumingDir  = "consuming"     // snapshots the uploader is uploading
	tmpDir        = "tmp"           // scratch: everything is written here first
	segSuffix     = ".seg"          // tmp/<unique>.seg: a segment being written (segment.go)
	ctlTempPrefix = "ctl."          // tmp/ctl.<unique>: a control block being made (ctl.go)
	uploadedFile  = "uploaded"      // the manifest last put in the store, with its pack table: whole, or a head over a base.<ID> beside it
	packedFile    = "packed"        // placements of packed chunks no uploaded manifest lists yet
	targetsFile   = "targets"       // the non-cache targets the chunks were uploaded to
	baseFile      = "manifest-base" // the manifest base last put in the store (format v2)
	statusFile    = "status.json"   // the uploader's status of the database
	beatFile      = "heartbeat"     // the serving uploader's heartbeat (Dir.Beat)
	uploadLock    = "upload.lock"   // flock: one uploading process at a time
	invalidFile   = "invalidated"   // a token Invalidate changes: uploaders forget what they knew of the store
)
