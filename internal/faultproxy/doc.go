// Package faultproxy is an HTTP reverse proxy on loopback that injects
// faults between a client and a server (typically the AWS SDK and a MinIO
// server), for retry and torture tests.
//
// Tests switch its behaviour at run time with [Proxy.Set]: pass requests
// through, answer with an error status and an S3-style XML error body,
// reset the connection, stall, cut the response body short, or flip a
// bit of a request's body; for every request or only for the next N
// matching ones. It counts requests by method. The proxy preserves the
// Host header, so SigV4 signatures made for the proxy's address stay
// valid at the server.
//
// Only tests import it. It knows nothing of Boule's stores, keys or
// encodings, and imports no other package of this module.
package faultproxy
