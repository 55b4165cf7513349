//go:build race

package spool

// raceEnabled reports a -race build, where the long random test runs
// shorter: it checks the spool's logic, which the race detector does not
// make more thorough, at several times the cost.
const raceEnabled = true
