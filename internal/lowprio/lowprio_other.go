//go:build !linux

package lowprio

import "errors"

const supported = false

func lower() {}

// Niceness is not known outside Linux.
func Niceness() (int, error) { return 0, errors.New("lowprio: niceness per thread is Linux only") }
