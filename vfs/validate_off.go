//go:build !boule_validate

package vfs

// validateSnapshot checks the staged snapshot against the database only in
// builds with the boule_validate tag (validate_on.go).
func validateSnapshot(*conn, cSource) {}
