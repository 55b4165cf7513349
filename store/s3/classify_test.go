package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/boule-vfs/boule/config"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
)

// offlineStore returns a store that makes no request: credentials come
// from the environment set here, and nothing is listening at its
// endpoint.
func offlineStore(t testing.TB, create bool) *Store {
	t.Helper()
	fakeCredentials(t)
	return newS3(t, config.S3Target{
		Region: "us-east-1", Endpoint: "http://127.0.0.1:9000",
		ChunkBucket: "c", ManifestBucket: "m", CreateBucketsOnDemand: create,
	}, Options{})
}

// fakeCredentials gives the AWS SDK credentials that no server accepts,
// and no shared configuration.
func fakeCredentials(t testing.TB) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDSTRING")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret-string-value")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
}

// s3Answer returns an error as the SDK reports an S3 error answer with
// status, code and message. An empty code means an answer without one
// (the answer to a HEAD has no body).
func s3Answer(status int, code, msg string) error {
	var cause error = errors.New("no error body")
	if code != "" {
		cause = &smithy.GenericAPIError{Code: code, Message: msg}
	}
	return answerWith(status, cause)
}

// answerWith returns an error as the SDK reports an answer with status
// whose body gave cause.
func answerWith(status int, cause error) error {
	return &smithy.OperationError{ServiceID: "S3", OperationName: "PutObject", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      cause,
		},
		RequestID: "req-1",
	}}
}

// TestClassifyAnswer: every S3 error answer is reported with the kind,
// the retryability and the words that say what to do about it, the
// first rule that applies winning.
func TestClassifyAnswer(t *testing.T) {
	unreadable := answerWith(400, &smithy.DeserializationError{Err: errors.New("XML syntax error")})
	cut := answerWith(400, fmt.Errorf("reading the body: %w", io.ErrUnexpectedEOF))
	cut500 := answerWith(500, &smithy.DeserializationError{Err: io.ErrUnexpectedEOF})
	cut404 := answerWith(404, &smithy.DeserializationError{Err: io.ErrUnexpectedEOF})
	for _, tc := range []struct {
		name      string
		op        string // "s3 put chunk" if empty
		create    bool
		err       error
		kind      error
		retryable bool
		detail    string
	}{
		{name: "missing key", err: s3Answer(404, "NoSuchKey", "gone"), kind: store.ErrNotFound, detail: "not found (404 NoSuchKey)"},
		{name: "404 without a code", err: s3Answer(404, "", ""), kind: store.ErrNotFound, detail: "not found (404)"},
		{name: "missing bucket", err: s3Answer(404, "NoSuchBucket", "no"), kind: store.ErrPermanent,
			detail: `bucket "c" does not exist (404 NoSuchBucket) and create_buckets_on_demand is off`},
		{name: "missing bucket, read", op: "s3 get manifest", err: s3Answer(404, "NoSuchBucket", "no"), kind: store.ErrPermanent,
			detail: `bucket "c" does not exist (404 NoSuchBucket): check its name in the target's configuration`},
		{name: "missing bucket, listed", op: "s3 list manifests", create: true, err: s3Answer(404, "NoSuchBucket", "no"), kind: store.ErrPermanent,
			detail: `bucket "c" does not exist (404 NoSuchBucket): check its name in the target's configuration`},
		{name: "missing bucket created on demand", create: true, err: s3Answer(404, "NoSuchBucket", "no"), kind: store.ErrPermanent,
			detail: `bucket "c" does not exist (404 NoSuchBucket)`},
		{name: "NoSuchBucket not as a 404", err: s3Answer(400, "NoSuchBucket", "odd"), kind: store.ErrPermanent, detail: "rejected (400 NoSuchBucket: odd)"},
		{name: "500", err: s3Answer(500, "InternalError", "We hit a snag"), retryable: true, detail: "server error (500 InternalError: We hit a snag)"},
		{name: "503 without a message", err: s3Answer(503, "SlowDown", ""), retryable: true, detail: "server error (503 SlowDown)"},
		{name: "429", err: s3Answer(429, "", ""), retryable: true, detail: "server error (429)"},
		{name: "408", err: s3Answer(408, "RequestTimeout", "slow"), retryable: true, detail: "server error (408 RequestTimeout: slow)"},
		{name: "RequestTimeout as a 400", err: s3Answer(400, "RequestTimeout", "idle"), retryable: true,
			detail: "request damaged or timed out in transit (400 RequestTimeout: idle)"},
		{name: "BadDigest", err: s3Answer(400, "BadDigest", "md5"), retryable: true, detail: "request damaged or timed out in transit (400 BadDigest: md5)"},
		{name: "IncompleteBody", err: s3Answer(400, "IncompleteBody", ""), retryable: true, detail: "request damaged or timed out in transit (400 IncompleteBody)"},
		{name: "payload hash mismatch", err: s3Answer(400, "XAmzContentSHA256Mismatch", ""), retryable: true,
			detail: "request damaged or timed out in transit (400 XAmzContentSHA256Mismatch)"},
		{name: "SlowDown as a 400", err: s3Answer(400, "SlowDown", ""), retryable: true, detail: "request damaged or timed out in transit (400 SlowDown)"},
		{name: "InternalError as a 400", err: s3Answer(400, "InternalError", ""), retryable: true, detail: "request damaged or timed out in transit (400 InternalError)"},
		{name: "unknown access key", err: s3Answer(403, "InvalidAccessKeyId", "who"), kind: store.ErrPermanent,
			detail: "access denied (403 InvalidAccessKeyId): check credentials (from EnvConfigCredentials)"},
		{name: "wrong secret", err: s3Answer(403, "SignatureDoesNotMatch", ""), kind: store.ErrPermanent,
			detail: "access denied (403 SignatureDoesNotMatch): check credentials (from EnvConfigCredentials)"},
		{name: "expired token", err: s3Answer(400, "ExpiredToken", ""), kind: store.ErrPermanent, detail: "access denied (400 ExpiredToken): check credentials (from EnvConfigCredentials)"},
		{name: "access denied", err: s3Answer(403, "AccessDenied", "no"), kind: store.ErrPermanent,
			detail: "access denied (403 AccessDenied): check credentials (from EnvConfigCredentials) and the bucket policy"},
		{name: "forbidden", err: s3Answer(403, "Forbidden", ""), kind: store.ErrPermanent,
			detail: "access denied (403 Forbidden): check credentials (from EnvConfigCredentials) and the bucket policy"},
		{name: "403 without a code", err: s3Answer(403, "", ""), kind: store.ErrPermanent, detail: "access denied (403): check credentials (from EnvConfigCredentials)"},
		{name: "401", err: s3Answer(401, "", ""), kind: store.ErrPermanent, detail: "access denied (401): check credentials (from EnvConfigCredentials)"},
		{name: "403 with another code", err: s3Answer(403, "RequestTimeTooSkewed", "clock"), kind: store.ErrPermanent,
			detail: "rejected (403 RequestTimeTooSkewed: clock)"},
		{name: "permanent redirect", err: s3Answer(301, "PermanentRedirect", "use eu-west-3"), kind: store.ErrPermanent,
			detail: "wrong region or endpoint (301 PermanentRedirect: use eu-west-3): check region and endpoint"},
		{name: "redirect without a code", err: s3Answer(307, "", ""), kind: store.ErrPermanent,
			detail: "wrong region or endpoint (307): check region and endpoint"},
		{name: "malformed authorization", err: s3Answer(400, "AuthorizationHeaderMalformed", "region"), kind: store.ErrPermanent,
			detail: "wrong region or endpoint (400 AuthorizationHeaderMalformed: region): check region and endpoint"},
		{name: "400 to a HEAD of the bucket", op: "s3 check", err: s3Answer(400, "", ""), kind: store.ErrPermanent,
			detail: "wrong region or endpoint (400): check region and endpoint"},
		{name: "400 without a code to a PUT", err: s3Answer(400, "", ""), kind: store.ErrPermanent, detail: "rejected (400)"},
		{name: "bucket taken", op: "s3 create", err: s3Answer(409, "BucketAlreadyExists", "taken"), kind: store.ErrPermanent,
			detail: `bucket name "c" is taken by another account (409 BucketAlreadyExists)`},
		{name: "invalid argument", err: s3Answer(400, "InvalidArgument", "no"), kind: store.ErrPermanent, detail: "rejected (400 InvalidArgument: no)"},
		{name: "precondition failed", op: opPutIf, err: s3Answer(412, "PreconditionFailed", "etag"), kind: store.ErrPrecondition,
			detail: "precondition failed (412 PreconditionFailed): the object is not the one expected"},
		{name: "conditional put conflict", op: opPutIf, err: s3Answer(409, "ConditionalRequestConflict", "retry"), retryable: true,
			detail: "request damaged or timed out in transit (409 ConditionalRequestConflict: retry)"},
		{name: "conditional put not implemented", op: opPutIf, err: s3Answer(501, "NotImplemented", "no"), kind: store.ErrUnsupported,
			detail: "conditional writes not supported (501 NotImplemented: no)"},
		{name: "501 to a plain put", err: s3Answer(501, "NotImplemented", "no"), retryable: true, detail: "server error (501 NotImplemented: no)"},
		{name: "unreadable error answer", err: unreadable, retryable: true, detail: "unreadable error response (400): " + unreadable.Error()},
		{name: "error answer cut short", err: cut, retryable: true, detail: "unreadable error response (400): " + cut.Error()},
		{name: "unreadable 500", err: cut500, retryable: true, detail: "unreadable error response (500): " + cut500.Error()},
		{name: "unreadable 404", err: cut404, retryable: true, detail: "unreadable error response (404): " + cut404.Error()},

		// Where rules overlap, the first applies.
		{name: "404 with a credential code", err: s3Answer(404, "AccessDenied", ""), kind: store.ErrNotFound, detail: "not found (404 AccessDenied)"},
		{name: "500 with a credential code", err: s3Answer(500, "AccessDenied", ""), retryable: true, detail: "server error (500 AccessDenied)"},
		{name: "401 with a transient code", err: s3Answer(401, "BadDigest", ""), retryable: true, detail: "request damaged or timed out in transit (401 BadDigest)"},
		{name: "401 with a region code", err: s3Answer(401, "AuthorizationHeaderMalformed", ""), kind: store.ErrPermanent,
			detail: "access denied (401 AuthorizationHeaderMalformed): check credentials (from EnvConfigCredentials)"},
		{name: "401 AccessDenied", err: s3Answer(401, "AccessDenied", ""), kind: store.ErrPermanent,
			detail: "access denied (401 AccessDenied): check credentials (from EnvConfigCredentials) and the bucket policy"},
		{name: "redirect with a credential code", err: s3Answer(301, "InvalidAccessKeyId", ""), kind: store.ErrPermanent,
			detail: "access denied (301 InvalidAccessKeyId): check credentials (from EnvConfigCredentials)"},
		{name: "redirect with BucketAlreadyExists", err: s3Answer(301, "BucketAlreadyExists", "x"), kind: store.ErrPermanent,
			detail: "wrong region or endpoint (301 BucketAlreadyExists: x): check region and endpoint"},
		{name: "HEAD 400 with a code", op: "s3 check", err: s3Answer(400, "InvalidArgument", "x"), kind: store.ErrPermanent,
			detail: "wrong region or endpoint (400 InvalidArgument: x): check region and endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := offlineStore(t, tc.create)
			op := tc.op
			if op == "" {
				op = "s3 put chunk"
			}
			status, code, _ := apiError(tc.err)
			ctx := context.Background()
			got := s.classify(ctx, ctx, op, "c", "k", tc.err)
			wantClassified(t, got, tc.err, tc.kind, tc.retryable, status, code,
				fmt.Sprintf("store: %s k%sbucket \"c\" at 127.0.0.1:9000: %s", op, prepositionOf(op), tc.detail))
		})
	}
}

// prepositionOf returns what store.Error puts between an operation's key
// and its bucket, with the spaces around it.
func prepositionOf(op string) string {
	switch op {
	case "s3 put chunk", opPutIf:
		return " to "
	case "s3 check", "s3 create":
		return " "
	case "s3 get manifest":
		return " from "
	case "s3 list manifests":
		return " in "
	}
	panic("no preposition known for " + op)
}

// wantClassified fails t unless got is a *store.Error that wraps cause,
// of kind, retryable or not, with status and code, saying msg.
func wantClassified(t *testing.T, got, cause, kind error, retryable bool, status int, code, msg string) {
	t.Helper()
	var se *store.Error
	if !errors.As(got, &se) {
		t.Fatalf("classify()=%T %v, want a *store.Error", got, got)
	}
	if se.Kind != kind {
		t.Errorf("classify().Kind=%v, want %v", se.Kind, kind)
	}
	if se.Retryable != retryable || store.IsRetryable(got) != retryable {
		t.Errorf("classify().Retryable=%v, want %v", se.Retryable, retryable)
	}
	if se.Status != status || se.Code != code {
		t.Errorf("classify() status %d code %q, want %d %q", se.Status, se.Code, status, code)
	}
	if got.Error() != msg {
		t.Errorf("classify()=%q\nwant          %q", got.Error(), msg)
	}
	if !errors.Is(got, cause) {
		t.Errorf("classify()=%v does not wrap %v", got, cause)
	}
}

// timeoutError is a net.Error that timed out.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// TestClassifyTransport: failures without an answer (no credentials, a
// certificate refused, a connection lost, a timeout) and those of the
// caller's own context are told apart, and messages never quote a
// request's query.
func TestClassifyTransport(t *testing.T) {
	refused := &smithyhttp.RequestSendError{Err: &url.Error{
		Op: "Put", URL: "http://127.0.0.1:1/c/k?X-Amz-Signature=TopSecret", Err: syscall.ECONNREFUSED}}
	notSent := &smithyhttp.RequestSendError{Err: errors.New("no route")}
	reset := fmt.Errorf("reading the body: %w", syscall.ECONNRESET)
	unknownCA := &url.Error{Op: "Get", URL: "https://minio.test/c/k?token=TopSecret",
		Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}
	record := tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}
	noIdentity := errors.New("operation error S3: PutObject, get identity: failed to refresh cached credentials")
	noCredentials := errors.New("failed to retrieve credentials: no EC2 IMDS role found")
	odd := errors.New("something odd")
	corrupt := fmt.Errorf("object of 9 bytes, more than the 8 a blob may have: %w", store.ErrCorrupt)
	deadline := fmt.Errorf("send: %w", context.DeadlineExceeded)
	netTimeout := &url.Error{Op: "Put", URL: "http://h/c/k", Err: timeoutError{}}
	for _, tc := range []struct {
		name      string
		err       error
		timedOut  bool // the request's own context ran out
		kind      error
		retryable bool
		detail    string
	}{
		{name: "connection refused", err: refused, retryable: true, detail: "transport error: Put http://127.0.0.1:1/c/k: connection refused"},
		{name: "request not sent", err: notSent, retryable: true, detail: "transport error: no route"},
		{name: "connection reset", err: reset, retryable: true, detail: "transport error: reading the body: connection reset by peer"},
		{name: "truncated body", err: io.ErrUnexpectedEOF, retryable: true, detail: "transport error: unexpected EOF"},
		{name: "unknown certificate authority", err: unknownCA, kind: store.ErrPermanent,
			detail: "TLS certificate verification failed (check the endpoint and AWS_CA_BUNDLE): Get https://minio.test/c/k: " + unknownCA.Err.Error()},
		{name: "plain HTTP at a TLS endpoint", err: record, kind: store.ErrPermanent,
			detail: "TLS certificate verification failed (check the endpoint and AWS_CA_BUNDLE): " + record.Error()},
		{name: "no identity", err: noIdentity, kind: store.ErrPermanent,
			detail: "no usable credentials from the AWS default chain (environment, shared config, instance role): " + noIdentity.Error()},
		{name: "no credentials", err: noCredentials, kind: store.ErrPermanent,
			detail: "no usable credentials from the AWS default chain (environment, shared config, instance role): " + noCredentials.Error()},
		{name: "anything else", err: odd, detail: "something odd"},
		{name: "corrupt blob", err: corrupt, kind: store.ErrCorrupt, detail: corrupt.Error()},
		{name: "request timed out", err: errors.New("canceled by the request's context"), timedOut: true, retryable: true, detail: "timed out after 30s"},
		{name: "deadline", err: deadline, retryable: true, detail: "timed out after 30s"},
		{name: "network timeout", err: netTimeout, retryable: true, detail: "timed out after 30s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := offlineStore(t, false)
			ctx := context.Background()
			rctx, cancel := context.WithCancelCause(ctx)
			defer cancel(nil)
			if tc.timedOut {
				cancel(errRequestTimeout)
			}
			got := s.classify(ctx, rctx, "s3 put chunk", "c", "k", tc.err)
			wantClassified(t, got, tc.err, tc.kind, tc.retryable, 0, "",
				`store: s3 put chunk k to bucket "c" at 127.0.0.1:9000: `+tc.detail)
		})
	}
}

// TestClassifyCallerContext: once the caller's context is done, the error
// says so and is neither retryable nor of any kind, whatever the request
// ran into.
func TestClassifyCallerContext(t *testing.T) {
	s := offlineStore(t, false)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"answer", s3Answer(503, "SlowDown", "")},
		{"transport", &smithyhttp.RequestSendError{Err: errors.New("boom")}},
		{"the caller's error itself", fmt.Errorf("send: %w", context.Canceled)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			got := s.classify(ctx, ctx, "s3 get chunk", "c", "k", tc.err)
			wantClassified(t, got, tc.err, nil, false, 0, "", `store: s3 get chunk k from bucket "c" at 127.0.0.1:9000: context canceled`)
			if !errors.Is(got, context.Canceled) {
				t.Errorf("classify()=%v, want it to wrap context.Canceled", got)
			}
		})
	}
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
		defer cancel()
		err := errors.New("stalled")
		got := s.classify(ctx, ctx, "s3 get chunk", "c", "k", err)
		wantClassified(t, got, err, nil, false, 0, "", `store: s3 get chunk k from bucket "c" at 127.0.0.1:9000: context deadline exceeded`)
		if !errors.Is(got, context.DeadlineExceeded) {
			t.Errorf("classify()=%v, want it to wrap context.DeadlineExceeded", got)
		}
	})
	t.Run("already classified", func(t *testing.T) {
		in := &store.Error{Op: "s3 check", Target: "bucket", Detail: "as it was", Kind: store.ErrPermanent}
		ctx := context.Background()
		if got := s.classify(ctx, ctx, "s3 put chunk", "c", "k", fmt.Errorf("wrapped: %w", in)); !errors.Is(got, in) || got.Error() != "wrapped: "+in.Error() {
			t.Errorf("classify()=%v, want the error as it came", got)
		}
	})
}

// TestClassifyForgetsMissingBucket: a bucket that vanished is checked
// (and created on demand) again before the next request to it.
func TestClassifyForgetsMissingBucket(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		forget bool
	}{
		{"NoSuchBucket", s3Answer(404, "NoSuchBucket", ""), true},
		{"NoSuchKey", s3Answer(404, "NoSuchKey", ""), false},
		{"NoSuchBucket not as a 404", s3Answer(400, "NoSuchBucket", ""), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := offlineStore(t, true)
			s.markEnsured("c")
			s.markEnsured("m")
			ctx := context.Background()
			_ = s.classify(ctx, ctx, "s3 get chunk", "c", "k", tc.err)
			if s.ensured["c"] == tc.forget || !s.ensured["m"] {
				t.Errorf("after classify(%v), ensured=%v, want bucket c forgotten: %v", tc.err, s.ensured, tc.forget)
			}
		})
	}
}

// TestAnswerTables: every class of answer has a verdict whose detail
// leaves no placeholder unfilled, and every S3 code with a class of its
// own gets that class's verdict in a plain 400 answer.
func TestAnswerTables(t *testing.T) {
	for c := unreadableAnswer; c <= rejected; c++ {
		t.Run(fmt.Sprintf("class %d", c), func(t *testing.T) {
			v := answerVerdicts[c]
			if v.detail == "" {
				t.Fatalf("answerVerdicts[%d] has no detail", c)
			}
			a := answer{status: 400, code: "Code", msg: "message", cause: "cause", bucket: "b"}
			if got := a.expand(v.detail); strings.ContainsAny(got, "{}") {
				t.Errorf("expand(%q)=%q, want every placeholder filled", v.detail, got)
			}
			if (v.kind == nil) != v.retryable {
				t.Errorf("answerVerdicts[%d]=%+v: want retryable exactly when of no kind", c, v)
			}
		})
	}
	for code, class := range codeClasses {
		t.Run(code, func(t *testing.T) {
			a := answer{status: 400, code: code, bucket: "b"}
			if got := a.class(); got != class {
				t.Errorf("answer{400 %s}.class()=%d, want %d", code, got, class)
			}
			if got, want := a.verdict(), answerVerdicts[class]; got.kind != want.kind || got.retryable != want.retryable ||
				!strings.Contains(got.detail, "(400 "+code) {
				t.Errorf("answer{400 %s}.verdict()=%+v, want %+v naming the code", code, got, want)
			}
		})
	}
}

// TestNoCredentialsBehindAnInstanceMetadataRefusal: with no credentials in
// the environment or the shared files, the SDK asks the instance metadata
// service. Its answer is not the store's: a refusal (some hosts answer
// 403) means there are no credentials here, which retrying cannot fix,
// and not that the store denied access; its trouble (a 503) passes, and
// is retried.
func TestNoCredentialsBehindAnInstanceMetadataRefusal(t *testing.T) {
	for _, tc := range []struct {
		status    int
		retryable bool
		want      string
	}{
		{http.StatusForbidden, false, "no usable credentials"},
		{http.StatusServiceUnavailable, true, "cannot get credentials now (503"},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "no", tc.status)
			}))
			defer imds.Close()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				t.Errorf("the store got a request: %s %s", r.Method, r.URL)
				http.Error(w, "forbidden", http.StatusForbidden)
			}))
			defer srv.Close()
			t.Setenv("AWS_ACCESS_KEY_ID", "")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "")
			t.Setenv("AWS_CONFIG_FILE", os.DevNull)
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
			t.Setenv("AWS_EC2_METADATA_DISABLED", "")
			t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.URL)
			s := newS3(t, config.S3Target{Region: "us-east-1", Endpoint: srv.URL, ChunkBucket: "chunks", ManifestBucket: "manifests"}, Options{})
			err := s.PutChunk(context.Background(), manifest.ZeroChunk, make([]byte, manifest.ChunkSize))
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "access denied") ||
				store.IsRetryable(err) != tc.retryable || errors.Is(err, store.ErrPermanent) == tc.retryable {
				t.Fatalf("PutChunk without credentials, metadata service answering %d: %v (retryable %v); want %q, retryable %v",
					tc.status, err, store.IsRetryable(err), tc.want, tc.retryable)
			}
		})
	}
}
