// Package sqlshell runs Debian's sqlite3 shell on a database for tests that
// need another process to hold the database open or locked (through
// the loadable extension, when the test has the shell load it): it sends
// SQL and dot-commands, and reads the output up to a mark the shell
// prints.
//
// Only tests import it. It fails the test when there is no sqlite3 on
// the PATH, and links no SQLite of its own.
package sqlshell
