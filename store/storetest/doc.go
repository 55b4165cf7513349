// Package storetest tests stores: [Run] is the conformance suite every
// backend of package store must pass, and [Fake] an in-memory store that
// records its calls, for the unit tests of the uploader, restores and
// replicas.
package storetest
