package replicate

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
)

// DefaultS3Timeout bounds each S3 request, from sending it to reading the
// last byte of the answer, when S3Options.Timeout is zero.
const DefaultS3Timeout = 30 * time.Second

// S3Options tunes an S3Store.
type S3Options struct {
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
type S3Store struct {
	client  *s3.Client
	target  config.S3Target
	timeout time.Duration
	desc    string // for String
	where   string // " at host" appended to bucket names in errors

	mu      sync.Mutex
	ensured map[string]bool // buckets known to exist (CreateBucketsOnDemand)
}

var _ Store = (*S3Store)(nil)

// errRequestTimeout is the cause of a request context that hit the
// store's per-request timeout.
var errRequestTimeout = errors.New("request timed out")

// NewS3Store returns a store for target t. It loads the AWS SDK's default
// configuration (credentials, shared config files, AWS_CA_BUNDLE) with
// t.Region, and makes no request.
func NewS3Store(ctx context.Context, t config.S3Target, opts S3Options) (*S3Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultS3Timeout
	}
	s := &S3Store{target: t, timeout: opts.Timeout, ensured: map[string]bool{}}
	host := "aws:" + t.Region
	if t.Endpoint != "" {
		u, err := url.Parse(t.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, &Error{Op: "s3 open", Target: "endpoint", Kind: ErrPermanent,
				Detail: fmt.Sprintf("endpoint %q is not an absolute http or https URL", redactURL(t.Endpoint))}
		}
		if u.User != nil {
			return nil, &Error{Op: "s3 open", Target: "endpoint", Kind: ErrPermanent,
				Detail: "endpoint must not contain user information; credentials come from the AWS default chain"}
		}
		if u.RawQuery != "" || u.ForceQuery {
			// The SDK refuses it at the first request, quoting it whole.
			return nil, &Error{Op: "s3 open", Target: "endpoint", Kind: ErrPermanent,
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
		return nil, &Error{Op: "s3 open", Target: s.desc, Kind: ErrPermanent, Err: err,
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
func (s *S3Store) String() string { return s.desc }

// Client returns the store's S3 client, for tests and tools.
func (s *S3Store) Client() *s3.Client { return s.client }

// ChunkBucket returns the name of the bucket that holds chunks.
func (s *S3Store) ChunkBucket() string { return s.target.ChunkBucket }

// ManifestBucket returns the name of the bucket that holds manifests.
func (s *S3Store) ManifestBucket() string { return s.target.ManifestBucket }

// PutChunk implements Store.
func (s *S3Store) PutChunk(ctx context.Context, fp manifest.Fingerprint, data []byte) error {
	return s.put(ctx, "s3 put chunk", s.target.ChunkBucket, ChunkKey(fp), EncodeBlob(data))
}

// GetChunk implements Store.
func (s *S3Store) GetChunk(ctx context.Context, fp manifest.Fingerprint) ([]byte, error) {
	const op = "s3 get chunk"
	key := ChunkKey(fp)
	blob, err := s.get(ctx, op, s.target.ChunkBucket, key, "", maxChunkBlob)
	if err != nil {
		return nil, err
	}
	data, err := DecodeChunk(fp, blob)
	if err != nil {
		return nil, s.newError(op, s.target.ChunkBucket, key, err, ErrCorrupt, err.Error())
	}
	return data, nil
}

// TouchChunk implements Store by copying the chunk onto itself, replacing
// its metadata, which sets its Last-Modified time. The chunk bucket
// should not be versioned, or each touch keeps another copy.
func (s *S3Store) TouchChunk(ctx context.Context, fp manifest.Fingerprint) error {
	return s.touch(ctx, "s3 touch chunk", ChunkKey(fp))
}

func (s *S3Store) touch(ctx context.Context, op, key string) error {
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
func (s *S3Store) PutPack(ctx context.Context, id manifest.Fingerprint, blob []byte) error {
	return s.put(ctx, "s3 put pack", s.target.ChunkBucket, PackKey(id), blob)
}

// GetPack implements Store.
func (s *S3Store) GetPack(ctx context.Context, id manifest.Fingerprint) ([]byte, error) {
	return s.get(ctx, "s3 get pack", s.target.ChunkBucket, PackKey(id), "", manifest.MaxPackSize)
}

// TouchPack implements Store, as TouchChunk.
func (s *S3Store) TouchPack(ctx context.Context, id manifest.Fingerprint) error {
	return s.touch(ctx, "s3 touch pack", PackKey(id))
}

// PutManifest implements Store.
func (s *S3Store) PutManifest(ctx context.Context, key string, data []byte) error {
	const op = "s3 put manifest"
	if err := checkManifestKey(key); err != nil {
		return s.newError(op, s.target.ManifestBucket, key, err, ErrPermanent, err.Error())
	}
	return s.put(ctx, op, s.target.ManifestBucket, key, EncodeManifestBlob(data))
}

// GetManifest implements Store.
func (s *S3Store) GetManifest(ctx context.Context, key string) ([]byte, error) {
	return s.getManifest(ctx, "s3 get manifest", key, "")
}

// GetManifestVersion implements Store.
func (s *S3Store) GetManifestVersion(ctx context.Context, key, versionID string) ([]byte, error) {
	if versionID == "" {
		return s.getManifest(ctx, "s3 get manifest version", key, "")
	}
	return s.getManifest(ctx, "s3 get manifest version", key, versionID)
}

func (s *S3Store) getManifest(ctx context.Context, op, key, versionID string) ([]byte, error) {
	if err := checkManifestKey(key); err != nil {
		return nil, s.newError(op, s.target.ManifestBucket, key, err, ErrPermanent, err.Error())
	}
	blob, err := s.get(ctx, op, s.target.ManifestBucket, key, versionID, maxManifestDecoded)
	if err != nil {
		return nil, err
	}
	data, err := DecodeManifestBlob(blob)
	if err != nil {
		return nil, s.newError(op, s.target.ManifestBucket, key, err, ErrCorrupt, err.Error())
	}
	return data, nil
}

// ListManifests implements Store.
func (s *S3Store) ListManifests(ctx context.Context, prefix string) ([]ManifestInfo, error) {
	const op = "s3 list manifests"
	bucket := s.target.ManifestBucket
	var out []ManifestInfo
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
				out = append(out, ManifestInfo{
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
	slices.SortFunc(out, func(a, b ManifestInfo) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// ManifestVersions implements Store. Delete markers are skipped. Without
// versioning, S3 lists the one object with version ID "null".
func (s *S3Store) ManifestVersions(ctx context.Context, key string) ([]Version, error) {
	const op = "s3 list manifest versions"
	bucket := s.target.ManifestBucket
	if err := checkManifestKey(key); err != nil {
		return nil, s.newError(op, bucket, key, err, ErrPermanent, err.Error())
	}
	var out []Version
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
				out = append(out, Version{
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
		return nil, s.newError(op, bucket, key, nil, ErrNotFound, "no versions")
	}
	// S3 lists a key's versions newest first; keep that order among
	// equal timestamps, and put the latest first.
	slices.SortStableFunc(out, func(a, b Version) int {
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
func (s *S3Store) EnableVersioning(ctx context.Context) error {
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
func (s *S3Store) EnsureBuckets(ctx context.Context) error {
	for _, b := range []string{s.target.ChunkBucket, s.target.ManifestBucket} {
		if err := s.ensureBucket(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// put uploads blob. Content-MD5 lets the server reject a body damaged in
// transit: over HTTPS the SDK does not sign the payload.
func (s *S3Store) put(ctx context.Context, op, bucket, key string, blob []byte) error {
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
func (s *S3Store) get(ctx context.Context, op, bucket, key, versionID string, limit int64) ([]byte, error) {
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
			return fmt.Errorf("object of %d bytes, more than the %d a blob may have: %w", n, limit, ErrCorrupt)
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
			return fmt.Errorf("object of more than the %d bytes a blob may have: %w", limit, ErrCorrupt)
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
func (s *S3Store) do(ctx context.Context, op, bucket, key string, f func(context.Context) error) error {
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
func (s *S3Store) ensureBucket(ctx context.Context, bucket string) error {
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
		return s.newError(op, bucket, "", err, ErrPermanent,
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

func (s *S3Store) markEnsured(bucket string) {
	s.mu.Lock()
	s.ensured[bucket] = true
	s.mu.Unlock()
}

// forget drops what ensureBucket learnt about bucket, after it vanished.
func (s *S3Store) forget(bucket string) {
	s.mu.Lock()
	delete(s.ensured, bucket)
	s.mu.Unlock()
}

func (s *S3Store) newError(op, bucket, key string, err, kind error, detail string) *Error {
	return &Error{Op: op, Key: key, Target: fmt.Sprintf("bucket %q%s", bucket, s.where),
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
func (s *S3Store) classify(ctx, rctx context.Context, op, bucket, key string, err error) error {
	var se *Error
	if errors.As(err, &se) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		if !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
		return s.newError(op, bucket, key, err, nil, cerr.Error())
	}
	if errors.Is(err, ErrCorrupt) {
		return s.newError(op, bucket, key, err, ErrCorrupt, err.Error())
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
			e.Kind = ErrPermanent
			e.Detail = "no usable credentials from the AWS default chain (environment, shared config, instance role): " + innermost(err)
		case isTLSConfigError(err):
			e.Kind = ErrPermanent
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
		e.Kind = ErrPermanent
		if s.target.CreateBucketsOnDemand {
			e.Detail = fmt.Sprintf("bucket %q does not exist (%s)", bucket, what)
		} else {
			e.Detail = fmt.Sprintf("bucket %q does not exist (%s) and create_buckets_on_demand is off", bucket, what)
		}
	case status == http.StatusNotFound:
		e.Kind = ErrNotFound
		e.Detail = "not found (" + what + ")"
	case retryableStatus(status):
		e.Retryable = true
		e.Detail = "server error (" + what + withMsg(msg) + ")"
	case transientCodes[code]:
		e.Retryable = true
		e.Detail = "request damaged or timed out in transit (" + what + withMsg(msg) + ")"
	case credentialCodes[code] || (status == http.StatusForbidden && code == "") || status == http.StatusUnauthorized:
		e.Kind = ErrPermanent
		e.Detail = "access denied (" + what + "): check credentials"
		if code == "AccessDenied" || code == "Forbidden" {
			e.Detail += " and the bucket policy"
		}
	case regionCodes[code] || (status >= 300 && status < 400) ||
		(status == http.StatusBadRequest && op == "s3 check"):
		// An answer to HEAD has no body, hence no code; S3 and MinIO
		// answer 400 or 301 to a request signed for the wrong region.
		e.Kind = ErrPermanent
		e.Detail = "wrong region or endpoint (" + what + withMsg(msg) + "): check region and endpoint"
	case code == "BucketAlreadyExists":
		e.Kind = ErrPermanent
		e.Detail = fmt.Sprintf("bucket name %q is taken by another account (%s)", bucket, what)
	default:
		e.Kind = ErrPermanent
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
		log.Debug("replicate: aws sdk: "+fmt.Sprintf(format, v...), "class", string(c))
	})
}
