// Package s3 is the S3 backend of package store: chunk, pack and manifest
// objects in an S3 bucket pair (or any S3-compatible service), through
// aws-sdk-go-v2. It registers itself with store.Open for "s3" targets.
//
// It owns what is particular to S3: the client configuration (endpoints,
// path-style addressing, AWS_CA_BUNDLE, one attempt per request), bucket
// checks and creation, and the classification of S3 errors into store's
// kinds (classify.go). It must not spell keys or encodings, which come
// from package store, nor retry on its own: store.Limited does.
package s3
