// Package miniotest runs a throwaway MinIO server on loopback, for tests
// and for cmd/benchpeers: random root credentials, a region, a data
// directory of its own, and the AWS SDK environment that points at it
// ([Server.Env]). Tests can stop it, kill it as a crash would, and
// restart it on the same port with the same data.
//
// The server binary is found through the BOULE_MINIO environment
// variable, or else at .tools/bin/minio under the module root; `make
// minio` builds it there. When it is missing, tests that need it are
// skipped, or fail when CI=true. On Linux the kernel kills the server
// if the process that started it dies without stopping it.
//
// Only tests and cmd/benchpeers import it. It creates no buckets (its
// users do, through package store/s3 or the AWS SDK), and imports no
// other package of this module.
package miniotest
