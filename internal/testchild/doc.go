// Package testchild lets a test binary double as the child processes its
// tests start: TestMain asks [Run], before running any test, whether this
// process is one, and runs it if so. [Pipes] connects a test to a child
// it has yet to start.
//
// Only tests import it, directly or through package sqlshell. It imports
// no other package of this module.
package testchild
