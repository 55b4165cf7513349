package config

import (
	"errors"
	"io/fs"
	"strings"
)

// ErrInvalid is returned when a configuration is not well-formed JSON,
// does not have the expected shape (unknown, duplicate or missing keys,
// values of the wrong type), or fails validation. Errors returned by
// [Parse], [Load] and [Config.Validate] for such problems match it with
// errors.Is; they are always an [*Error], which errors.As can extract.
var ErrInvalid = errors.New("config: invalid configuration")

// Error describes one problem with a configuration.
//
// Key is the full path of the value at fault, written with dots between
// object keys and brackets around array indices, for example
// "replication_targets[0].s3.region". For problems with a key of an
// object rather than with a value (an unknown, duplicate or missing
// key) Key is the path of the enclosing object and Msg quotes the key.
// Key is "" for problems with the document as a whole, such as a JSON
// syntax error or trailing data, and for keys of the top-level object.
type Error struct {
	// Key is the path of the value at fault, or "" (see [Error]).
	Key string
	// Msg says what is wrong, without the "config: " prefix or Key.
	Msg string
}

// Error returns "config: KEY: MSG", or "config: MSG" when Key is empty.
func (e *Error) Error() string {
	if e.Key == "" {
		return "config: " + e.Msg
	}
	return "config: " + e.Key + ": " + e.Msg
}

// Is reports whether target is [ErrInvalid], so that every *Error
// matches ErrInvalid with errors.Is.
func (e *Error) Is(target error) bool {
	return target == ErrInvalid
}

// fileError is returned by Load when the configuration comes from a
// file, so that the message names the file. It wraps either the error
// that reading the file returned or the *Error from parsing it.
type fileError struct {
	path string
	err  error
}

func (e *fileError) Error() string {
	var pe *fs.PathError
	if errors.As(e.err, &pe) {
		return "config: reading config file " + e.path + ": " + pe.Err.Error()
	}
	return "config: " + e.path + ": " + strings.TrimPrefix(e.err.Error(), "config: ")
}

func (e *fileError) Unwrap() error {
	return e.err
}
