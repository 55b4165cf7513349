// Package s3 is the S3 backend of package store: chunk, pack and manifest
// objects in an S3 bucket pair (or any S3-compatible service), through
// aws-sdk-go-v2. It registers itself with store.Open for "s3" targets.
//
// It owns what is particular to S3: the client configuration (endpoints,
// path-style addressing, AWS_CA_BUNDLE), bucket checks and creation, and
// the classification of S3 errors into store's kinds. Keys and encodings
// come from package store.
package s3
