package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
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
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// DefaultS3Timeout bounds each S3 request, from sending it to reading the
// last byte of the answer, when S3Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// S3Options tunes an S3Store.
type Options struct {
	// Timeout bounds each request; zero means DefaultS3Timeout. A request
	// that times out fails with a retryable error.
	Timeout time.Duration
	// Logger receives the SDK's own log lines (such as a response body
	// that could not be drained), at debug level; nil discards them. The
	// SDK would otherwise print them to stderr, in the user's process.
	Logger *slog.Logger
}

// S3Store is a Store in a pair of S3 buckets, chunks in the target's
// ChunkBucket and manifests in its ManifestBucket (which may be the same
// bucket). Credentials come only from the AWS SDK's default chain:
// environment variables, shared config and credentials files, web
// identity, container and instance roles.
//
// The SDK's own retries are disabled: each method makes one attempt (one
// HTTP request, or one per page when listing). Wrap the store with
// NewLimited to rate-limit and retry.
type Store struct {
	client  *s3.Client
	target  config.S3Target
	timeout time.Duration
	desc    string // for String
	where   string // " at host" appended to bucket names in errors

	mu      sync.Mutex
	ensured map[string]bool // buckets known to exist (CreateBucketsOnDemand)
}

var _ store.Store = (*Store)(nil)

// errRequestTimeout is the cause of a request context that hit the
// store's per-request timeout.
var errRequestTimeout = errors.New("request timed out")

// NewS3Store returns a store for target t. It loads the AWS SDK's default
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

// String implements Store: "s3://<chunk bucket>,<manifest bucket>@<host>",
// where host is the endpoint's host, or "aws:<region>".
func (s *Store) String() string { return s.desc }

// Client returns the store's S3 client, for tests and tools.
func (s *Store) Client() *s3.Client { return s.client }

// ChunkBucket returns the name of the bucket that holds chunks.
func (s *Store) ChunkBucket() string { return s.target.ChunkBucket }

// ManifestBucket returns the name of the bucket that holds manifests.
func (s *Store) ManifestBucket() string { return s.target.ManifestBucket }

// PutChunk implements Store.
func (s *Store) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return s.put(ctx, "s3 put chunk", s.target.ChunkBucket, store.ChunkKey(fp), store.EncodeBlob(data))
}

// GetChunk implements Store.
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

// TouchChunk implements Store by copying the chunk onto itself, replacing
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

// PutPack implements Store.
func (s *Store) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.put(ctx, "s3 put pack", s.target.ChunkBucket, store.PackKey(id), blob)
}

// GetPack implements Store.
func (s *Store) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return s.get(ctx, "s3 get pack", s.target.ChunkBucket, store.PackKey(id), "", manifest.MaxPackSize)
}

// TouchPack implements Store, as TouchChunk.
func (s *Store) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return s.touch(ctx, "s3 touch pack", store.PackKey(id))
}

// PutManifest implements Store.
func (s *Store) PutManifest(ctx context.Context, key string, data []byte) error {
	const op = "s3 put manifest"
	if err := store.CheckManifestKey(key); err != nil {
		return s.newError(op, s.target.ManifestBucket, key, err, store.ErrPermanent, err.Error())
	}
	return s.put(ctx, op, s.target.ManifestBucket, key, store.EncodeManifestBlob(data))
}

// GetManifest implements Store.
func (s *Store) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return s.getManifest(ctx, "s3 get manifest", key, "")
}

// GetManifestVersion implements Store.
func (s *Store) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	if versionID == "" {
		return s.getManifest(ctx, "s3 get manifest version", key, "")
	}
	return s.getManifest(ctx, "s3 get manifest version", key, versionID)
}

func (s *Store) getManifest(ctx context.Context, op, key, versionID string) ([]byte, error) {
	if err := store.CheckManifestKey(key); err != nil {
		return nil, s.newError(op, s.target.ManifestBucket, key, err, store.ErrPermanent, err.Error())
	}
	blob, err := s.get(ctx, op, s.target.ManifestBucket, key, versionID, store.MaxManifestDecoded)
	if err != nil {
		return nil, err
	}
	data, err := store.DecodeManifestBlob(blob)
	if err != nil {
		return nil, s.newError(op, s.target.ManifestBucket, key, err, store.ErrCorrupt, err.Error())
	}
	return data, nil
}

// ListManifests implements Store.
func (s *Store) ListManifests(ctx context.Context, prefix string) ([]store.ManifestInfo, error) {
	const op = "s3 list manifests"
	bucket := s.target.ManifestBucket
	var out []store.ManifestInfo
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(bucket),
		Prefix: aws.String(prefix),
	})
	for p.HasMorePages() {
		err := s.do(ctx, op, bucket, prefix, func(ctx context.Context) error {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			for _, o := range page.Contents {
				out = append(out, store.ManifestInfo{
					Key:          aws.ToString(o.Key),
					LastModified: aws.ToTime(o.LastModified),
					Size:         aws.ToInt64(o.Size),
				})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(out, func(a, b store.ManifestInfo) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// ManifestVersions implements Store. Delete markers are skipped. Without
// versioning, S3 lists the one object with version ID "null".
func (s *Store) ManifestVersions(ctx context.Context, key string) ([]store.Version, error) {
	const op = "s3 list manifest versions"
	bucket := s.target.ManifestBucket
	if err := store.CheckManifestKey(key); err != nil {
		return nil, s.newError(op, bucket, key, err, store.ErrPermanent, err.Error())
	}
	var out []store.Version
	p := s3.NewListObjectVersionsPaginator(s.client, &s3.ListObjectVersionsInput{
		Bucket: aws.String(bucket),
		Prefix: aws.String(key),
	})
	for p.HasMorePages() {
		err := s.do(ctx, op, bucket, key, func(ctx context.Context) error {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
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
			return nil
		})
		if err != nil {
			return nil, err
		}
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
	sum := md5.Sum(blob)
	contentMD5 := base64.StdEncoding.EncodeToString(sum[:])
	return s.do(ctx, op, bucket, key, func(ctx context.Context) error {
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(bucket),
			Key:           aws.String(key),
			Body:          bytes.NewReader(blob),
			ContentLength: aws.Int64(int64(len(blob))),
			ContentMD5:    aws.String(contentMD5),
			ContentType:   aws.String("application/octet-stream"),
		})
		return err
	})
}

// get reads a whole object (one version of it if versionID is set); an
// object larger than limit is reported as corrupt.
func (s *Store) get(ctx context.Context, op, bucket, key, versionID string, limit int64) ([]byte, error) {
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
	const op = "s3 check"
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
		return s.newError(op, bucket, "", err, store.ErrPermanent,
			fmt.Sprintf("bucket %q does not exist (404) and create_buckets_on_demand is off", bucket))
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

func (s *Store) newError(op, bucket, key string, err, kind error, detail string) *store.Error {
	return &store.Error{Op: op, Key: key, Target: fmt.Sprintf("bucket %q%s", bucket, s.where),
		Kind: kind, Detail: detail, Err: err}
}

// apiError returns the HTTP status, the S3 error code and message of an
// error answer, or zeros if err is not one.
func apiError(err error) (status int, code, msg string) {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	} else {
		var sre *smithyhttp.ResponseError
		if errors.As(err, &sre) {
			status = sre.HTTPStatusCode()
		}
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code, msg = ae.ErrorCode(), ae.ErrorMessage()
	}
	return status, code, msg
}

// Error codes that mean the credentials are wrong, unknown or expired.
var credentialCodes = map[string]bool{
	"InvalidAccessKeyId":    true,
	"SignatureDoesNotMatch": true,
	"InvalidToken":          true,
	"ExpiredToken":          true,
	"TokenRefreshRequired":  true,
	"InvalidSecurity":       true,
	"AccessDenied":          true,
	"AllAccessDisabled":     true,
	"AccountProblem":        true,
	"Forbidden":             true,
}

// 4xx error codes that are worth retrying: the request was damaged or
// too slow in transit (S3 answers 400 RequestTimeout to a client that
// stops sending its body).
var transientCodes = map[string]bool{
	"BadDigest":                 true,
	"IncompleteBody":            true,
	"RequestTimeout":            true,
	"XAmzContentSHA256Mismatch": true,
	"SlowDown":                  true,
	"InternalError":             true,
}

// Error codes that mean the region or endpoint is wrong.
var regionCodes = map[string]bool{
	"PermanentRedirect":                  true,
	"AuthorizationHeaderMalformed":       true,
	"IllegalLocationConstraintException": true,
	"InvalidRegion":                      true,
	"Redirect":                           true,
	"TemporaryRedirect":                  true,
}

// classify turns an error from the SDK (or from reading a body) into an
// *Error. ctx is the caller's context, rctx the request's.
func (s *Store) classify(ctx, rctx context.Context, op, bucket, key string, err error) error {
	var se *store.Error
	if errors.As(err, &se) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		if !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
		return s.newError(op, bucket, key, err, nil, cerr.Error())
	}
	if errors.Is(err, store.ErrCorrupt) {
		return s.newError(op, bucket, key, err, store.ErrCorrupt, err.Error())
	}
	// With the caller's context alive, any deadline is the request's own
	// (the context's, or the HTTP client's backstop).
	var ne net.Error
	if context.Cause(rctx) == errRequestTimeout || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		e := s.newError(op, bucket, key, err, nil, fmt.Sprintf("timed out after %v", s.timeout))
		e.Retryable = true
		return e
	}
	status, code, msg := apiError(err)
	if status == 0 {
		e := s.newError(op, bucket, key, err, nil, "")
		txt := err.Error()
		switch {
		case strings.Contains(txt, "get identity:") || strings.Contains(txt, "failed to retrieve credentials"):
			e.Kind = store.ErrPermanent
			e.Detail = "no usable credentials from the AWS default chain (environment, shared config, instance role): " + innermost(err)
		case isTLSConfigError(err):
			e.Kind = store.ErrPermanent
			e.Detail = "TLS certificate verification failed (check the endpoint and AWS_CA_BUNDLE): " + innermost(err)
		case retryableCause(err):
			e.Retryable = true
			e.Detail = "transport error: " + innermost(err)
		default:
			e.Detail = innermost(err)
		}
		return e
	}
	e := s.newError(op, bucket, key, err, nil, "")
	e.Status, e.Code = status, code
	what := fmt.Sprint(status)
	if code != "" {
		what += " " + code
	}
	var de *smithy.DeserializationError
	switch {
	case code == "" && (errors.As(err, &de) || errors.Is(err, io.ErrUnexpectedEOF)):
		// An error status whose body could not be read or parsed: the
		// answer was cut or mangled on the way (MinIO closes the
		// connection after a BadDigest, and a proxy may cut the body
		// short), so the request may well succeed if sent again.
		e.Retryable = true
		e.Detail = "unreadable error response (" + what + "): " + innermost(err)
	case status == http.StatusNotFound && code == "NoSuchBucket":
		s.forget(bucket)
		e.Kind = store.ErrPermanent
		if s.target.CreateBucketsOnDemand {
			e.Detail = fmt.Sprintf("bucket %q does not exist (%s)", bucket, what)
		} else {
			e.Detail = fmt.Sprintf("bucket %q does not exist (%s) and create_buckets_on_demand is off", bucket, what)
		}
	case status == http.StatusNotFound:
		e.Kind = store.ErrNotFound
		e.Detail = "not found (" + what + ")"
	case store.RetryableStatus(status):
		e.Retryable = true
		e.Detail = "server error (" + what + withMsg(msg) + ")"
	case transientCodes[code]:
		e.Retryable = true
		e.Detail = "request damaged or timed out in transit (" + what + withMsg(msg) + ")"
	case credentialCodes[code] || (status == http.StatusForbidden && code == "") || status == http.StatusUnauthorized:
		e.Kind = store.ErrPermanent
		e.Detail = "access denied (" + what + "): check credentials"
		if code == "AccessDenied" || code == "Forbidden" {
			e.Detail += " and the bucket policy"
		}
	case regionCodes[code] || (status >= 300 && status < 400) ||
		(status == http.StatusBadRequest && op == "s3 check"):
		// An answer to HEAD has no body, hence no code; S3 and MinIO
		// answer 400 or 301 to a request signed for the wrong region.
		e.Kind = store.ErrPermanent
		e.Detail = "wrong region or endpoint (" + what + withMsg(msg) + "): check region and endpoint"
	case code == "BucketAlreadyExists":
		e.Kind = store.ErrPermanent
		e.Detail = fmt.Sprintf("bucket name %q is taken by another account (%s)", bucket, what)
	default:
		e.Kind = store.ErrPermanent
		e.Detail = "rejected (" + what + withMsg(msg) + ")"
	}
	return e
}

// isTLSConfigError reports whether err is a TLS failure that retrying
// cannot fix: an untrusted or mismatched certificate, or an endpoint
// that does not speak TLS.
func isTLSConfigError(err error) bool {
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	var rhe tls.RecordHeaderError
	return errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &hne) ||
		errors.As(err, &cie) || errors.As(err, &rhe)
}

func withMsg(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

// innermost returns the message of the most specific error in err's
// chain that still says something useful, skipping the SDK's wrapping
// ("operation error S3: PutObject, https request send error: …").
func innermost(err error) string {
	var send *smithyhttp.RequestSendError
	if errors.As(err, &send) && send.Err != nil {
		err = send.Err
	}
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Op + " " + redactURL(ue.URL) + ": " + ue.Err.Error()
	}
	return err.Error()
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

// retryableCause classifies an error that the AWS SDK or net/http
// returned: an answer with a retryable status, a request that could not
// be sent, or a transient network failure (store.TransientCause).
func retryableCause(err error) bool {
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCorrupt) || errors.Is(err, store.ErrPermanent) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	// The SDK wraps even a request that was never answered in a
	// response error, with status 0.
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() != 0 {
		return store.RetryableStatus(re.HTTPStatusCode())
	}
	var sre *smithyhttp.ResponseError
	if errors.As(err, &sre) && sre.HTTPStatusCode() != 0 {
		return store.RetryableStatus(sre.HTTPStatusCode())
	}
	var send *smithyhttp.RequestSendError
	if errors.As(err, &send) {
		return true
	}
	return store.TransientCause(err)
}

func init() {
	store.RegisterBackend(store.Backend{Name: "s3", Open: func(ctx context.Context, t config.Target, opts store.OpenOptions) (store.Store, bool, error) {
		if t.S3 == nil {
			return nil, false, nil
		}
		s, err := New(ctx, *t.S3, Options{Logger: opts.Logger})
		return s, err == nil, err
	}})
}
