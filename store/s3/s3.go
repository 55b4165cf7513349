package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// DefaultTimeout bounds each S3 request, from sending it to reading the
// last byte of the answer, when Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Options tunes a Store.
type Options struct {
	// Timeout bounds each request; zero means DefaultTimeout. A request
	// that times out fails with a retryable error.
	Timeout time.Duration
	// Logger receives the SDK's own log lines (such as a response body
	// that could not be drained), at debug level; nil discards them. The
	// SDK would otherwise print them to stderr, in the user's process.
	Logger *slog.Logger
}

// Store is a store.Store in a pair of S3 buckets, chunks in the target's
// ChunkBucket and manifests in its ManifestBucket (which may be the same
// bucket). Credentials come only from the AWS SDK's default chain:
// environment variables, shared config and credentials files, web
// identity, container and instance roles.
//
// The SDK's own retries are disabled: each method makes one attempt (one
// HTTP request, or one per page when listing). Wrap the store with
// store.NewLimited to rate-limit and retry.
type Store struct {
	client  *s3.Client
	target  config.S3Target
	timeout time.Duration
	desc    string // for String
	where   string // " at host" appended to bucket names in errors

	mu      sync.Mutex
	ensured map[string]bool // buckets known to exist (CreateBucketsOnDemand)
}

var (
	_ store.Store       = (*Store)(nil)
	_ store.Conditional = (*Store)(nil)
)

// errRequestTimeout is the cause of a request context that hit the
// store's per-request timeout.
var errRequestTimeout = errors.New("request timed out")

// New returns a store for target t. It loads the AWS SDK's default
// configuration (credentials, shared config files, AWS_CA_BUNDLE) with
// t.Region, and makes no request.
func New(ctx context.Context, t config.S3Target, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	s := &Store{target: t, timeout: opts.Timeout, ensured: map[string]bool{}}
	host := "aws:" + t.Region
	if t.Endpoint != "" {
		u, err := url.Parse(t.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, &store.Error{Op: "s3 open", Target: "endpoint", Kind: store.ErrPermanent,
				Detail: fmt.Sprintf("endpoint %q is not an absolute http or https URL", redactURL(t.Endpoint))}
		}
		if u.User != nil {
			return nil, &store.Error{Op: "s3 open", Target: "endpoint", Kind: store.ErrPermanent,
				Detail: "endpoint must not contain user information; credentials come from the AWS default chain"}
		}
		if u.RawQuery != "" || u.ForceQuery {
			// The SDK refuses it at the first request, quoting it whole.
			return nil, &store.Error{Op: "s3 open", Target: "endpoint", Kind: store.ErrPermanent,
				Detail: fmt.Sprintf("endpoint %q must not have a query", redactURL(t.Endpoint))}
		}
		host = u.Host
		s.where = " at " + u.Host
	}
	s.desc = "s3://" + t.ChunkBucket + "," + t.ManifestBucket + "@" + host

	// The SDK adds AWS_CA_BUNDLE (or ca_bundle from the shared config)
	// to the HTTP client's root CAs, which it can only do to a
	// BuildableClient: a plain *http.Client fails with "unable to add
	// custom RootCAs HTTPClient".
	//
	// Each request runs under a context with the timeout; the client's
	// own timeouts are a looser backstop, so that the context's fires
	// first and timeouts are reported the same way.
	backstop := opts.Timeout + opts.Timeout/2
	httpClient := awshttp.NewBuildableClient().
		WithTimeout(backstop).
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = min(backstop, 10*time.Second)
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.ResponseHeaderTimeout = backstop
			tr.TLSHandshakeTimeout = min(backstop, 10*time.Second)
			tr.MaxIdleConnsPerHost = 64
		})

	loadOpts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithHTTPClient(httpClient),
		awsconfig.WithLogger(sdkLogger(opts.Logger)),
		// One attempt per call: Limited retries, so that every attempt is
		// rate-limited and counted.
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		// Integrity comes from SigV4's payload hash on PUT and from
		// fingerprints and manifest checksums on GET. The flexible
		// checksums (CRC32 trailers) that the SDK adds by default are
		// not supported by every S3-compatible service.
		awsconfig.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		awsconfig.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if t.Region != "" {
		loadOpts = append(loadOpts, awsconfig.WithRegion(t.Region))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, &store.Error{Op: "s3 open", Target: s.desc, Kind: store.ErrPermanent, Err: err,
			Detail: "loading the AWS SDK configuration: " + err.Error()}
	}
	s.client = s3.NewFromConfig(cfg, func(o *s3.Options) {
		if t.Endpoint != "" {
			o.BaseEndpoint = aws.String(t.Endpoint)
		}
		o.UsePathStyle = !t.DomainAddressing
	})
	return s, nil
}

// String implements store.Store: "s3://<chunk bucket>,<manifest bucket>@<host>",
// where host is the endpoint's host, or "aws:<region>".
func (s *Store) String() string { return s.desc }

// Client returns the store's S3 client, for tests and tools.
func (s *Store) Client() *s3.Client { return s.client }

// ChunkBucket returns the name of the bucket that holds chunks.
func (s *Store) ChunkBucket() string { return s.target.ChunkBucket }

// ManifestBucket returns the name of the bucket that holds manifests.
func (s *Store) ManifestBucket() string { return s.target.ManifestBucket }

// PutChunk implements store.Store.
func (s *Store) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return s.put(ctx, "s3 put chunk", s.target.ChunkBucket, store.ChunkKey(fp), store.EncodeBlob(data))
}

// GetChunk implements store.Store.
func (s *Store) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	const op = "s3 get chunk"
	key := store.ChunkKey(fp)
	blob, err := s.get(ctx, op, s.target.ChunkBucket, key, "", store.MaxChunkBlob)
	if err != nil {
		return nil, err
	}
	data, err := store.DecodeChunk(fp, blob)
	if err != nil {
		return nil, s.newError(op, s.target.ChunkBucket, key, err, store.ErrCorrupt, err.Error())
	}
	return data, nil
}

// TouchChunk implements store.Store by copying the chunk onto itself, replacing
// its metadata, which sets its Last-Modified time. The chunk bucket
// should not be versioned, or each touch keeps another copy.
func (s *Store) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	return s.touch(ctx, "s3 touch chunk", store.ChunkKey(fp))
}

func (s *Store) touch(ctx context.Context, op, key string) error {
	bucket := s.target.ChunkBucket
	return s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		_, err := s.client.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket:            aws.String(bucket),
			Key:               aws.String(key),
			CopySource:        aws.String(bucket + "/" + key), // both are URL-safe
			MetadataDirective: types.MetadataDirectiveReplace,
			ContentType:       aws.String("application/octet-stream"),
		})
		return err
	})
}

// PutPack implements store.Store.
func (s *Store) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.put(ctx, "s3 put pack", s.target.ChunkBucket, store.PackKey(id), blob)
}

// GetPack implements store.Store.
func (s *Store) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return s.get(ctx, "s3 get pack", s.target.ChunkBucket, store.PackKey(id), "", manifest.MaxPackSize)
}

// ReadPack implements store.PackReader: the object's body is read into
// alloc's buffer, of its Content-Length (or, for an answer without one,
// read first and copied).
func (s *Store) ReadPack(ctx context.Context, id manifest.Fingerprint, alloc func(size int) ([]byte, error)) ([]byte, error) {
	return s.readInto(ctx, "s3 read pack", s.target.ChunkBucket, store.PackKey(id), manifest.MaxPackSize, alloc)
}

// ReadPackRange implements store.PackRangeReader with a ranged GET. A
// range past the object's end (416 InvalidRange, or fewer bytes than
// asked) is ErrCorrupt.
func (s *Store) ReadPackRange(ctx context.Context, id manifest.Fingerprint, off, length int, dst []byte) ([]byte, error) {
	const op = "s3 read pack range"
	bucket, key := s.target.ChunkBucket, store.PackKey(id)
	if cap(dst) < length {
		dst = make([]byte, length)
	}
	dst = dst[:length]
	err := s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
			Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+length-1))})
		if err != nil {
			if a := readAnswer(err); a.code == "InvalidRange" {
				return fmt.Errorf("range %d+%d past the pack's end: %w", off, length, store.ErrCorrupt)
			}
			return err
		}
		defer out.Body.Close()
		if n := aws.ToInt64(out.ContentLength); out.ContentLength != nil && n != int64(length) {
			return fmt.Errorf("range %d+%d: %d bytes in the answer: %w", off, length, n, store.ErrCorrupt)
		}
		if _, err := io.ReadFull(out.Body, dst); err != nil {
			return fmt.Errorf("reading the body: got fewer than %d bytes: %w", length, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return dst, nil
}

// ReadManifestBlob implements store.BlobReader, as ReadPack.
func (s *Store) ReadManifestBlob(ctx context.Context, key string, alloc func(size int) ([]byte, error)) ([]byte, error) {
	const op = "s3 read manifest"
	if err := s.checkManifestKey(op, key); err != nil {
		return nil, err
	}
	return s.readInto(ctx, op, s.target.ManifestBucket, key, store.MaxManifestDecoded, alloc)
}

// ReadBase implements store.BlobReader, as ReadPack.
func (s *Store) ReadBase(ctx context.Context, id manifest.Fingerprint, size int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	return s.readInto(ctx, "s3 read base", s.target.ChunkBucket, store.BaseKey(id), size, alloc)
}

// readInto reads the object under key, of at most limit bytes, into
// alloc's buffer, of its Content-Length (or, for an answer without one,
// read first and copied).
func (s *Store) readInto(ctx context.Context, op, bucket, key string, limit int64, alloc func(size int) ([]byte, error)) ([]byte, error) {
	var blob []byte
	err := s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		if out.ContentLength == nil || *out.ContentLength < 0 {
			b, err := io.ReadAll(io.LimitReader(out.Body, limit+1))
			if err != nil {
				return fmt.Errorf("reading the body: %w", err)
			}
			if int64(len(b)) > limit {
				return fmt.Errorf("object of more than the %d bytes a blob may have: %w", limit, store.ErrCorrupt)
			}
			buf, err := alloc(len(b))
			if err != nil {
				return err
			}
			blob = buf[:copy(buf, b)]
			return nil
		}
		n := *out.ContentLength
		if n > limit {
			return fmt.Errorf("object of %d bytes, more than the %d a blob may have: %w", n, limit, store.ErrCorrupt)
		}
		buf, err := alloc(int(n))
		if err != nil {
			return err
		}
		buf = buf[:n]
		if _, err := io.ReadFull(out.Body, buf); err != nil {
			return fmt.Errorf("reading the body: got fewer than %d bytes: %w", n, err)
		}
		blob = buf
		return nil
	})
	return blob, err
}

// TouchPack implements store.Store, as TouchChunk.
func (s *Store) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return s.touch(ctx, "s3 touch pack", store.PackKey(id))
}

// PutBase implements store.Store.
func (s *Store) PutBase(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.put(ctx, "s3 put base", s.target.ChunkBucket, store.BaseKey(id), blob)
}

// GetBase implements store.Store.
func (s *Store) GetBase(ctx context.Context, id manifest.Fingerprint, size int64) ([]byte, error) {
	return s.get(ctx, "s3 get base", s.target.ChunkBucket, store.BaseKey(id), "", size)
}

// TouchBase implements store.Store, as TouchChunk.
func (s *Store) TouchBase(ctx context.Context, id manifest.Fingerprint) error {
	return s.touch(ctx, "s3 touch base", store.BaseKey(id))
}

// PutManifest implements store.Store.
func (s *Store) PutManifest(ctx context.Context, key string, data []byte) error {
	const op = "s3 put manifest"
	if err := s.checkManifestKey(op, key); err != nil {
		return err
	}
	return s.put(ctx, op, s.target.ManifestBucket, key, store.EncodeManifestBlob(data))
}

// opPutIf is the operation of a conditional put of a manifest.
const opPutIf = "s3 put manifest if"

// ConditionalPuts implements store.Conditional. S3 has honoured If-Match
// on PUT since November 2024, and If-None-Match since August 2024; MinIO
// does too. A clone that answers 501 Not Implemented fails PutManifestIf
// with ErrUnsupported; one that ignores the headers is caught by the
// uploader's probe (package upload).
func (s *Store) ConditionalPuts() bool { return true }

// PutManifestIf implements store.Conditional with PutObject's If-Match
// (If-None-Match: * when etag is ""). It returns the ETag of the answer,
// quotes included, as S3 expects it back. A 412 answer fails with
// ErrPrecondition; 409 ConditionalRequestConflict, a conditional write
// racing another, is retryable.
func (s *Store) PutManifestIf(ctx context.Context, key string, data []byte, etag string) (string, error) {
	if err := s.checkManifestKey(opPutIf, key); err != nil {
		return "", err
	}
	return s.putIf(ctx, opPutIf, s.target.ManifestBucket, key, store.EncodeManifestBlob(data), etag)
}

// GetManifestTag implements store.Conditional.
func (s *Store) GetManifestTag(ctx context.Context, key string) ([]byte, string, error) {
	var tag string
	data, err := s.getManifest(ctx, "s3 get manifest", key, "", &tag)
	if err != nil {
		return nil, "", err
	}
	return data, tag, nil
}

// GetManifest implements store.Store.
func (s *Store) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return s.getManifest(ctx, "s3 get manifest", key, "", nil)
}

// GetManifestVersion implements store.Store. An empty versionID means the
// latest version.
func (s *Store) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	return s.getManifest(ctx, "s3 get manifest version", key, versionID, nil)
}

// getManifest reads and decodes the manifest under key (its version
// versionID if set) and, if tag is not nil, sets *tag to its ETag.
func (s *Store) getManifest(ctx context.Context, op, key, versionID string, tag *string) ([]byte, error) {
	if err := s.checkManifestKey(op, key); err != nil {
		return nil, err
	}
	blob, err := s.getTagged(ctx, op, s.target.ManifestBucket, key, versionID, store.MaxManifestDecoded, tag)
	if err != nil {
		return nil, err
	}
	data, err := store.DecodeManifestBlob(blob)
	if err != nil {
		return nil, s.newError(op, s.target.ManifestBucket, key, err, store.ErrCorrupt, err.Error())
	}
	return data, nil
}

// ListManifests implements store.Store.
func (s *Store) ListManifests(ctx context.Context, prefix string) ([]store.ManifestInfo, error) {
	const op = "s3 list manifests"
	bucket := s.target.ManifestBucket
	var out []store.ManifestInfo
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(bucket),
		Prefix: aws.String(prefix),
	})
	err := eachPage(ctx, s, op, bucket, prefix, p, func(page *s3.ListObjectsV2Output) {
		for _, o := range page.Contents {
			out = append(out, store.ManifestInfo{
				Key:          aws.ToString(o.Key),
				LastModified: aws.ToTime(o.LastModified),
				Size:         aws.ToInt64(o.Size),
			})
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b store.ManifestInfo) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// ManifestVersions implements store.Store. Delete markers are skipped. Without
// versioning, S3 lists the one object with version ID "null".
func (s *Store) ManifestVersions(ctx context.Context, key string) ([]store.Version, error) {
	const op = "s3 list manifest versions"
	bucket := s.target.ManifestBucket
	if err := s.checkManifestKey(op, key); err != nil {
		return nil, err
	}
	var out []store.Version
	p := s3.NewListObjectVersionsPaginator(s.client, &s3.ListObjectVersionsInput{
		Bucket: aws.String(bucket),
		Prefix: aws.String(key),
	})
	err := eachPage(ctx, s, op, bucket, key, p, func(page *s3.ListObjectVersionsOutput) {
		for _, v := range page.Versions {
			if aws.ToString(v.Key) != key {
				continue
			}
			out = append(out, store.Version{
				ID:           aws.ToString(v.VersionId),
				LastModified: aws.ToTime(v.LastModified),
				IsLatest:     aws.ToBool(v.IsLatest),
			})
		}
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, s.newError(op, bucket, key, nil, store.ErrNotFound, "no versions")
	}
	// S3 lists a key's versions newest first; keep that order among
	// equal timestamps, and put the latest first.
	slices.SortStableFunc(out, func(a, b store.Version) int {
		if a.IsLatest != b.IsLatest {
			if a.IsLatest {
				return -1
			}
			return 1
		}
		return b.LastModified.Compare(a.LastModified)
	})
	return out, nil
}

// A pager is one of the SDK's paginators.
type pager[P any] interface {
	HasMorePages() bool
	NextPage(ctx context.Context, optFns ...func(*s3.Options)) (P, error)
}

// eachPage requests the pages of p one by one, each as one request of
// s.do, and passes each to f.
func eachPage[P any](ctx context.Context, s *Store, op, bucket, key string, p pager[P], f func(P)) error {
	for p.HasMorePages() {
		err := s.do(ctx, op, bucket, key, func(ctx context.Context) error {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			f(page)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// EnableVersioning turns on versioning of the manifest bucket, which
// point-in-time restores need. Pair it with a lifecycle rule that expires
// noncurrent versions.
func (s *Store) EnableVersioning(ctx context.Context) error {
	bucket := s.target.ManifestBucket
	return s.do(ctx, "s3 enable versioning", bucket, "", func(ctx context.Context) error {
		_, err := s.client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
			Bucket: aws.String(bucket),
			VersioningConfiguration: &types.VersioningConfiguration{
				Status: types.BucketVersioningStatusEnabled,
			},
		})
		return err
	})
}

// EnsureBuckets checks that both buckets exist, creating missing ones if
// the target's CreateBucketsOnDemand is set. The store also does this
// before its first request to each bucket.
func (s *Store) EnsureBuckets(ctx context.Context) error {
	for _, b := range []string{s.target.ChunkBucket, s.target.ManifestBucket} {
		if err := s.ensureBucket(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// put uploads blob. Content-MD5 lets the server reject a body damaged in
// transit: over HTTPS the SDK does not sign the payload.
func (s *Store) put(ctx context.Context, op, bucket, key string, blob []byte) error {
	return s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		_, err := s.client.PutObject(ctx, putInput(bucket, key, blob))
		return err
	})
}

// putIf uploads blob as put does, if the object's ETag is etag, or, when
// etag is "", if there is no object; it returns the new ETag.
func (s *Store) putIf(ctx context.Context, op, bucket, key string, blob []byte, etag string) (string, error) {
	in := putInput(bucket, key, blob)
	if etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(etag)
	}
	var tag string
	err := s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		out, err := s.client.PutObject(ctx, in)
		if err != nil {
			return err
		}
		if tag = aws.ToString(out.ETag); tag == "" {
			// Without it, the next put could not name what it replaces.
			return fmt.Errorf("the answer has no ETag: %w", store.ErrUnsupported)
		}
		return nil
	})
	return tag, err
}

func putInput(bucket, key string, blob []byte) *s3.PutObjectInput {
	sum := md5.Sum(blob)
	return &s3.PutObjectInput{
		Bucket:        aws.String(bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(blob),
		ContentLength: aws.Int64(int64(len(blob))),
		ContentMD5:    aws.String(base64.StdEncoding.EncodeToString(sum[:])),
		ContentType:   aws.String("application/octet-stream"),
	}
}

// get reads a whole object (one version of it if versionID is set); an
// object larger than limit is reported as corrupt.
func (s *Store) get(ctx context.Context, op, bucket, key, versionID string, limit int64) ([]byte, error) {
	return s.getTagged(ctx, op, bucket, key, versionID, limit, nil)
}

// getTagged reads an object as get does and, if tag is not nil, sets
// *tag to its ETag.
func (s *Store) getTagged(ctx context.Context, op, bucket, key, versionID string, limit int64, tag *string) ([]byte, error) {
	var blob []byte
	err := s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		in := &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}
		if versionID != "" {
			in.VersionId = aws.String(versionID)
		}
		out, err := s.client.GetObject(ctx, in)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		if n := aws.ToInt64(out.ContentLength); n > limit {
			return fmt.Errorf("object of %d bytes, more than the %d a blob may have: %w", n, limit, store.ErrCorrupt)
		}
		var buf bytes.Buffer
		if n := aws.ToInt64(out.ContentLength); n > 0 {
			// ReadFrom asks for MinRead more bytes before it sees EOF:
			// room for them saves copying the whole blob once more.
			buf.Grow(int(n) + bytes.MinRead)
		}
		n, err := io.Copy(&buf, io.LimitReader(out.Body, limit+1))
		if err != nil {
			return fmt.Errorf("reading the body: %w", err)
		}
		if n > limit {
			return fmt.Errorf("object of more than the %d bytes a blob may have: %w", limit, store.ErrCorrupt)
		}
		if cl := out.ContentLength; cl != nil && *cl != n {
			return fmt.Errorf("reading the body: got %d of %d bytes: %w", n, *cl, io.ErrUnexpectedEOF)
		}
		blob = buf.Bytes()
		if tag != nil {
			*tag = aws.ToString(out.ETag)
		}
		return nil
	})
	return blob, err
}

// do runs one request against bucket under the per-request timeout,
// first making sure the bucket exists if the target creates buckets on
// demand, and classifies its error.
func (s *Store) do(ctx context.Context, op, bucket, key string, f func(context.Context) error) error {
	if s.target.CreateBucketsOnDemand {
		if err := s.ensureBucket(ctx, bucket); err != nil {
			return err
		}
	}
	rctx, cancel := context.WithTimeoutCause(ctx, s.timeout, errRequestTimeout)
	defer cancel()
	err := f(rctx)
	if err == nil {
		return nil
	}
	return s.classify(ctx, rctx, op, bucket, key, err)
}

// ensureBucket checks once that bucket exists, creating it if
// CreateBucketsOnDemand is set; otherwise a missing bucket is a permanent
// error.
func (s *Store) ensureBucket(ctx context.Context, bucket string) error {
	s.mu.Lock()
	done := s.ensured[bucket]
	s.mu.Unlock()
	if done {
		return nil
	}
	// Concurrent first calls may each check (and create): that is
	// harmless, and holding no lock over requests keeps classify, which
	// may call forget, free of deadlocks.
	const op = opCheck
	rctx, cancel := context.WithTimeoutCause(ctx, s.timeout, errRequestTimeout)
	defer cancel()
	_, err := s.client.HeadBucket(rctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)})
	if err == nil {
		s.markEnsured(bucket)
		return nil
	}
	if status, _, _ := apiError(err); status != http.StatusNotFound || ctx.Err() != nil {
		return s.classify(ctx, rctx, op, bucket, "", err)
	}
	if !s.target.CreateBucketsOnDemand {
		a := answer{status: http.StatusNotFound, bucket: bucket}
		return s.newError(op, bucket, "", err, store.ErrPermanent, a.expand(answerVerdicts[missingBucket].detail))
	}
	in := &s3.CreateBucketInput{Bucket: aws.String(bucket)}
	if r := s.target.Region; r != "" && r != "us-east-1" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(r),
		}
	}
	_, err = s.client.CreateBucket(rctx, in)
	if err != nil {
		if _, code, _ := apiError(err); code != "BucketAlreadyOwnedByYou" {
			return s.classify(ctx, rctx, "s3 create", bucket, "", err)
		}
	}
	s.markEnsured(bucket)
	return nil
}

func (s *Store) markEnsured(bucket string) {
	s.mu.Lock()
	s.ensured[bucket] = true
	s.mu.Unlock()
}

// forget drops what ensureBucket learnt about bucket, after it vanished.
func (s *Store) forget(bucket string) {
	s.mu.Lock()
	delete(s.ensured, bucket)
	s.mu.Unlock()
}

// checkManifestKey fails op, a permanent error, unless key is a
// well-formed manifest key.
func (s *Store) checkManifestKey(op, key string) error {
	if err := store.CheckManifestKey(key); err != nil {
		return s.newError(op, s.target.ManifestBucket, key, err, store.ErrPermanent, err.Error())
	}
	return nil
}

func (s *Store) newError(op, bucket, key string, err, kind error, detail string) *store.Error {
	return &store.Error{Op: op, Key: key, Target: fmt.Sprintf("bucket %q%s", bucket, s.where),
		Kind: kind, Detail: detail, Err: err}
}

// redactURL removes any user information, query, fragment and opaque
// part (the "secret" of "key:secret") from a URL, so that presigned
// parameters or passwords never reach a log.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	u.RawQuery, u.ForceQuery = "", false
	u.Fragment, u.RawFragment = "", ""
	u.Opaque = ""
	return u.String()
}

// sdkLogger adapts log to the SDK's logger interface.
func sdkLogger(log *slog.Logger) logging.Logger {
	if log == nil {
		return logging.Nop{}
	}
	return logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		log.Debug("s3: aws sdk: "+fmt.Sprintf(format, v...), "class", string(c))
	})
}

func init() {
	store.RegisterBackend(store.Backend{Name: "s3", Open: func(ctx context.Context, t config.Target, opts store.OpenOptions) (store.Store, bool, error) {
		if t.S3 == nil {
			return nil, false, nil
		}
		tg := *t.S3
		if opts.ReadOnly {
			tg.CreateBucketsOnDemand = false // a reader never writes
		}
		s, err := New(ctx, tg, Options{Logger: opts.Logger})
		return s, err == nil, err
	}})
}
