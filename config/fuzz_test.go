package config

import (
	"errors"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it
// returns is an *Error, and that a configuration it accepts survives
// MarshalJSON and a second Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, tc := range validCases {
		f.Add([]byte(tc.json))
	}
	for _, tc := range invalidCases {
		f.Add([]byte(tc.json))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse()=%v (%T), want an *Error", err, err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Validate()=%v, want nil for a parsed Config", err)
		}
		again, out := reparse(t, cfg)
		if !reflect.DeepEqual(again, cfg) {
			t.Fatalf("Parse(%s)=%+v, want %+v", out, again, cfg)
		}
	})
}
