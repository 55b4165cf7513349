// Package osuser gives tests a second OS user, created as
// scripts/conformance.sh creates its user, to play another local user who
// shares a cache or reads a store, and runs commands as that user with
// runuser(1). Creating the user takes root: without it the test is
// skipped, or fails under CI=true.
//
// Only tests import it. It must not be used outside a test: it adds a
// user to the machine and changes the permissions of directories
// ([Reachable]).
package osuser
