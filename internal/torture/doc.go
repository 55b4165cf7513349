// Package torture holds Boule's crash and fault torture tests; it has no
// code of its own.
//
// The tests run a writer that commits numbered rows through the boule VFS
// in a child process, and kill it with SIGKILL at random points; kill a
// separate uploader process the same way; kill and restart MinIO; put the
// fault proxy (500s, 429s, resets, stalls, truncated and corrupted bodies)
// between the uploaders and MinIO; and put the spool on a tiny tmpfs. After
// each run they check that no committed transaction is missing, that every
// manifest seen in the store restores to a database that passes
// PRAGMA integrity_check and holds a prefix of the rows, and that after a
// flush the store holds exactly the database.
//
// The short variants run with `go test`. The long ones run with
//
//	go test ./internal/torture -boule.torture=long
//
// or with BOULE_TORTURE=long in the environment.
package torture
