package testlog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// Buffer is a bytes.Buffer safe to write from one goroutine (a child
// process's stderr, a command) while another reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Records is an slog.Handler that keeps every record it is given, at
// every level.
type Records struct {
	mu      sync.Mutex
	records []slog.Record
}

var _ slog.Handler = (*Records)(nil)

// Enabled implements slog.Handler: every level is.
func (l *Records) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (l *Records) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}

// WithAttrs implements slog.Handler; the attributes are dropped.
func (l *Records) WithAttrs([]slog.Attr) slog.Handler { return l }

// WithGroup implements slog.Handler; the group is dropped.
func (l *Records) WithGroup(string) slog.Handler { return l }

// Count returns how many records at level have substr in their message.
func (l *Records) Count(level slog.Level, substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if r.Level == level && strings.Contains(r.Message, substr) {
			n++
		}
	}
	return n
}

// String returns every record, one a line: level, message and attributes,
// for a failure message.
func (l *Records) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, r := range l.records {
		fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
		r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
		b.WriteByte('\n')
	}
	return b.String()
}
