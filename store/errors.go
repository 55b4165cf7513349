package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
)

// Sentinel errors. Errors returned by the stores in this package are
// *Error values that wrap at most one of these; test for them with
// [errors.Is], and for transient failures with [IsRetryable].
var (
	// ErrNotFound is returned when the requested chunk, manifest or
	// manifest version does not exist in the store.
	ErrNotFound = errors.New("store: not found")

	// ErrCorrupt is returned when a stored blob does not decode, or when
	// a chunk's decoded bytes do not hash to the fingerprint it was
	// stored under.
	ErrCorrupt = errors.New("store: corrupt blob")

	// ErrPermanent is returned when the store rejected a request in a
	// way that retrying cannot fix: bad or missing credentials, access
	// denied, a missing bucket or directory, a wrong region, an invalid
	// key, or any other 4xx answer except 404, 408 and 429.
	ErrPermanent = errors.New("store: permanent failure")

	// ErrPrecondition is returned when a conditional put of a manifest
	// (Conditional.PutManifestIf) found the stored manifest other than
	// the caller expected: its entity tag is not the one given, or a
	// manifest is there where none was expected. Nothing was stored.
	ErrPrecondition = errors.New("store: precondition failed")

	// ErrUnsupported is returned when the store cannot do what was asked
	// of it, such as a conditional put to a store without conditional
	// writes (an S3 clone that answers 501 Not Implemented). Nothing was
	// stored.
	ErrUnsupported = errors.New("store: not supported")
)

// Error describes a failed store operation. Its message starts with
// "store: " and names the operation, the key and the target, such as
//
//	store: s3 put chunk ab12cd34ef56… to bucket "chunks": access denied (403 InvalidAccessKeyId): check credentials
//
// It never contains credentials.
type Error struct {
	// Op is the operation, such as "s3 put chunk" or "dir get manifest".
	Op string
	// Key is the object key, or "" for operations on a whole store.
	Key string
	// Target names where the operation went, such as `bucket "chunks"`
	// or a directory path.
	Target string
	// Status is the HTTP status of the store's answer, 0 if there was
	// none (transport errors, directory stores).
	Status int
	// Code is the S3 error code, such as "NoSuchKey", if any.
	Code string
	// Detail is the human-readable description of what went wrong.
	Detail string
	// Kind is ErrNotFound, ErrCorrupt, ErrPermanent, ErrPrecondition,
	// ErrUnsupported or nil.
	Kind error
	// Retryable reports whether trying again may succeed.
	Retryable bool
	// Err is the underlying error, if any.
	Err error
}

// Error returns the message described at [Error].
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("store: ")
	b.WriteString(e.Op)
	if e.Key != "" {
		b.WriteByte(' ')
		b.WriteString(shortKey(e.Key))
	}
	if e.Target != "" {
		if p := preposition(e.Op); p != "" {
			b.WriteByte(' ')
			b.WriteString(p)
		}
		b.WriteByte(' ')
		b.WriteString(e.Target)
	}
	b.WriteString(": ")
	b.WriteString(e.Detail)
	return b.String()
}

// Unwrap returns the error's kind and its underlying error, so that
// errors.Is(err, ErrNotFound) and errors.Is(err, context.Canceled) both
// work.
func (e *Error) Unwrap() []error {
	var out []error
	if e.Kind != nil {
		out = append(out, e.Kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

// shortKey abbreviates chunk keys, whose 64 hex digits add nothing to a
// log line after the first dozen.
func shortKey(k string) string {
	if len(k) == 67 && k[2] == '/' && isLowerHex(k[3:]) {
		return k[3:15] + "…"
	}
	return k
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// preposition links an operation to its target, by the operation's verb
// (its second word): "s3 put chunk K to bucket", "dir open /path".
func preposition(op string) string {
	verb := op
	if _, rest, ok := strings.Cut(op, " "); ok {
		verb, _, _ = strings.Cut(rest, " ")
	}
	switch verb {
	case "put":
		return "to"
	case "get":
		return "from"
	case "touch", "list":
		return "in"
	case "check", "create", "open":
		return ""
	}
	return "on"
}

// IsRetryable reports whether err is a transient failure that may go away
// if the operation is tried again: a 5xx, 408 or 429 answer, a timeout, a
// reset or refused connection, a truncated body, or another transport
// error. It returns false for nil, ErrNotFound, ErrCorrupt, ErrPermanent,
// ErrPrecondition, ErrUnsupported and the caller's own cancellation.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var se *Error
	if errors.As(err, &se) {
		return se.Retryable
	}
	return TransientCause(err)
}

// TransientCause reports whether err, which did not come from a store of
// this module (a backend's client library, net/http), is a failure that
// may go away if tried again: a truncated body, a reset or refused
// connection, a timeout or another network error. Backends add what their
// client library reports.
func TransientCause(err error) bool {
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrPermanent) ||
		errors.Is(err, ErrPrecondition) || errors.Is(err, ErrUnsupported) {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// The caller's own context; a request timeout set by a store is
		// reported as an *Error with Retryable set.
		return false
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// RetryableStatus reports whether an HTTP status is worth retrying.
func RetryableStatus(code int) bool {
	return code >= 500 || code == 408 || code == 429
}
