//go:build !boule_validate

package vfs

import "github.com/boule-vfs/boule/spool"

// withFull gives the capture of a commit the whole database only in
// builds with the boule_validate tag (validate_on.go).
func withFull(_ *conn, src cSource) spool.Source { return src }

// validator checks staged snapshots only in builds with the
// boule_validate tag (validate_on.go).
var validator func(db *spool.DB, gen uint64, want []byte)

// walOpener is spool.Options.OpenWAL: persisters read the logs of WAL
// databases through connections of their own.
var walOpener = openWAL
