package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/boule-vfs/boule/store"
)

// The classification of failures: what the SDK reports, turned into
// store's kinds, whether to retry, and words that say what to do.

// opCheck is the operation of ensureBucket's HEAD of a bucket.
const opCheck = "s3 check"

// A verdict is what classify makes of a failure: its kind (nil or one of
// store's sentinels), whether trying again may help, and its detail.
type verdict struct {
	kind      error
	retryable bool
	detail    string
}

// classify turns an error from the SDK (or from reading a body) into an
// *store.Error. ctx is the caller's context, rctx the request's.
func (s *Store) classify(ctx, rctx context.Context, op, bucket, key string, err error) error {
	var se *store.Error
	if errors.As(err, &se) {
		return err
	}
	e := s.newError(op, bucket, key, err, nil, "")
	var v verdict
	switch cerr := ctx.Err(); {
	case cerr != nil:
		if !errors.Is(err, cerr) {
			e.Err = fmt.Errorf("%w: %w", cerr, err)
		}
		v = verdict{detail: cerr.Error()}
	case errors.Is(err, store.ErrCorrupt):
		v = verdict{kind: store.ErrCorrupt, detail: err.Error()}
	case errors.Is(err, store.ErrUnsupported):
		v = verdict{kind: store.ErrUnsupported, detail: err.Error()}
	case timedOut(rctx, err):
		v = verdict{retryable: true, detail: fmt.Sprintf("timed out after %v", s.timeout)}
	case noCredentials(err):
		// Before the answer: an HTTP status in err is the credential
		// provider's, not the store's.
		v = credentialsVerdict(err)
	default:
		a := readAnswer(err)
		if a.status == 0 {
			v = transportVerdict(err)
			break
		}
		a.op, a.bucket, a.create = op, bucket, s.target.CreateBucketsOnDemand
		switch a.class() {
		case missingBucket:
			s.forget(bucket)
		case accessDenied, accessDeniedPolicy:
			// Which link of the default chain answered: an instance role
			// or a stray shared file is a common surprise.
			a.creds = s.credentialSource(ctx)
		}
		v = a.verdict()
		e.Status, e.Code = a.status, a.code
	}
	e.Kind, e.Retryable, e.Detail = v.kind, v.retryable, v.detail
	return e
}

// timedOut reports whether a request ran out of time, with the caller's
// context alive: its own context's timeout, or the HTTP client's
// backstop.
func timedOut(rctx context.Context, err error) bool {
	var ne net.Error
	return context.Cause(rctx) == errRequestTimeout || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// Failures without an answer.

// transportRules classify a failure that got no answer, in order: the
// first that matches gives the verdict, whose detail the innermost cause
// completes. A failure that none matches is neither retried nor of any
// kind.
var transportRules = []struct {
	match func(error) bool
	verdict
}{
	{noCredentials, verdict{store.ErrPermanent, false,
		"no usable credentials from the AWS default chain (environment, shared config, instance role): "}},
	{isTLSConfigError, verdict{store.ErrPermanent, false,
		"TLS certificate verification failed (check the endpoint and AWS_CA_BUNDLE): "}},
	{retryableCause, verdict{nil, true, "transport error: "}},
}

func transportVerdict(err error) verdict {
	for _, r := range transportRules {
		if r.match(err) {
			v := r.verdict
			v.detail += innermost(err)
			return v
		}
	}
	return verdict{detail: innermost(err)}
}

// credentialsVerdict judges a failure to get credentials from the SDK's
// default chain, whose last provider (the instance metadata service, a
// container's endpoint, STS) may have answered. Its trouble (408, 429,
// 5xx) passes: retried. A refusal (401, 403, 404), or no answer at all,
// means there are no credentials to be had here: permanent.
func credentialsVerdict(err error) verdict {
	if status, _, _ := apiError(err); status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500 {
		return verdict{nil, true, fmt.Sprintf("cannot get credentials now (%d from the credential provider): %s", status, innermost(err))}
	}
	return transportVerdict(err)
}

// noCredentials reports whether err says that the SDK found no
// credentials, which it does in words only.
func noCredentials(err error) bool {
	txt := err.Error()
	return strings.Contains(txt, "get identity:") || strings.Contains(txt, "failed to retrieve credentials")
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

// Error answers.

// An answer is what classify knows of an S3 error answer and of the
// request it answered.
type answer struct {
	status    int
	code, msg string
	// unreadable reports that the answer had no code because its body
	// could not be read or parsed.
	unreadable bool
	cause      string // innermost(err)

	op, bucket string
	create     bool   // the target creates buckets on demand
	creds      string // where the credentials came from (credentialSource)
}

// readAnswer returns what err, an error of the SDK, says of the answer
// it got; status is 0 if it got none.
func readAnswer(err error) answer {
	a := answer{cause: innermost(err)}
	a.status, a.code, a.msg = apiError(err)
	var de *smithy.DeserializationError
	a.unreadable = a.code == "" && (errors.As(err, &de) || errors.Is(err, io.ErrUnexpectedEOF))
	return a
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

// An answerClass is what an error answer means. The classes are declared
// in order of precedence: where an answer's status and its code mean
// different classes, the earlier one wins.
type answerClass int

const (
	unreadableAnswer   answerClass = iota // cut or mangled on the way: it says nothing of the request
	missingBucket                         // 404 NoSuchBucket
	notFound                              // any other 404
	preconditionFailed                    // 412: a conditional put found the object changed
	notImplemented                        // 501 to a conditional put: the store has no conditional writes
	serverError                           // 5xx, 408, 429
	damagedInTransit                      // the request was damaged or too slow on the way
	accessDeniedPolicy                    // AccessDenied, Forbidden: credentials or the bucket policy
	accessDenied                          // the credentials are wrong, unknown or expired
	wrongRegion                           // the region or endpoint is wrong
	bucketTaken                           // BucketAlreadyExists, when creating a bucket
	rejected                              // any other refusal
)

// codeClasses gives the class of the S3 error codes that have one of
// their own.
var codeClasses = map[string]answerClass{
	// Damaged or too slow in transit (S3 answers 400 RequestTimeout to a
	// client that stops sending its body), or busy: worth retrying.
	"BadDigest":                 damagedInTransit,
	"IncompleteBody":            damagedInTransit,
	"RequestTimeout":            damagedInTransit,
	"XAmzContentSHA256Mismatch": damagedInTransit,
	"SlowDown":                  damagedInTransit,
	"InternalError":             damagedInTransit,
	// A conditional write that raced another write of the object: S3
	// says to try again.
	"ConditionalRequestConflict": damagedInTransit,

	"AccessDenied":          accessDeniedPolicy,
	"Forbidden":             accessDeniedPolicy,
	"InvalidAccessKeyId":    accessDenied,
	"SignatureDoesNotMatch": accessDenied,
	"InvalidToken":          accessDenied,
	"ExpiredToken":          accessDenied,
	"TokenRefreshRequired":  accessDenied,
	"InvalidSecurity":       accessDenied,
	"AllAccessDisabled":     accessDenied,
	"AccountProblem":        accessDenied,

	"PermanentRedirect":                  wrongRegion,
	"AuthorizationHeaderMalformed":       wrongRegion,
	"IllegalLocationConstraintException": wrongRegion,
	"InvalidRegion":                      wrongRegion,
	"Redirect":                           wrongRegion,
	"TemporaryRedirect":                  wrongRegion,

	"BucketAlreadyExists": bucketTaken,
}

// answerVerdicts gives each class its verdict. In a detail, {what} stands
// for the status and code ("403 AccessDenied"), {msg} for ": " and the
// answer's message if it has one, {bucket} for the quoted bucket name,
// {cause} for the innermost error, {nocreate} for what the target's
// create_buckets_on_demand adds to a missing bucket, and {creds} for
// where the credentials came from, when the SDK says.
var answerVerdicts = [...]verdict{
	unreadableAnswer:   {nil, true, "unreadable error response ({what}): {cause}"},
	missingBucket:      {store.ErrPermanent, false, "bucket {bucket} does not exist ({what}){nocreate}"},
	notFound:           {store.ErrNotFound, false, "not found ({what})"},
	preconditionFailed: {store.ErrPrecondition, false, "precondition failed ({what}): the object is not the one expected"},
	notImplemented:     {store.ErrUnsupported, false, "conditional writes not supported ({what}{msg})"},
	serverError:        {nil, true, "server error ({what}{msg})"},
	damagedInTransit:   {nil, true, "request damaged or timed out in transit ({what}{msg})"},
	accessDeniedPolicy: {store.ErrPermanent, false, "access denied ({what}): check credentials{creds} and the bucket policy"},
	accessDenied:       {store.ErrPermanent, false, "access denied ({what}): check credentials{creds}"},
	wrongRegion:        {store.ErrPermanent, false, "wrong region or endpoint ({what}{msg}): check region and endpoint"},
	bucketTaken:        {store.ErrPermanent, false, "bucket name {bucket} is taken by another account ({what})"},
	rejected:           {store.ErrPermanent, false, "rejected ({what}{msg})"},
}

// class returns what the answer means: first what an unreadable answer,
// a 404, a 412, a 501 to a conditional put or a retryable status means
// whatever the code; then the earlier
// of what the code and the status mean.
func (a answer) class() answerClass {
	switch {
	case a.unreadable:
		return unreadableAnswer
	case a.status == http.StatusNotFound && a.code == "NoSuchBucket":
		return missingBucket
	case a.status == http.StatusNotFound:
		return notFound
	case a.status == http.StatusPreconditionFailed:
		return preconditionFailed
	case a.status == http.StatusNotImplemented && a.op == opPutIf:
		return notImplemented
	case store.RetryableStatus(a.status):
		return serverError
	}
	byCode, ok := codeClasses[a.code]
	if !ok {
		byCode = rejected
	}
	return min(byCode, a.statusClass())
}

// statusClass returns what the status means of an answer that is not a
// 404 or retryable: an answer to HEAD has no body, hence no code, and S3
// and MinIO answer 400 or 301 to a request signed for the wrong region.
func (a answer) statusClass() answerClass {
	switch {
	case a.status == http.StatusUnauthorized, a.status == http.StatusForbidden && a.code == "":
		return accessDenied
	case a.status >= 300 && a.status < 400, a.status == http.StatusBadRequest && a.op == opCheck:
		return wrongRegion
	}
	return rejected
}

func (a answer) verdict() verdict {
	v := answerVerdicts[a.class()]
	v.detail = a.expand(v.detail)
	return v
}

// readOnlyOp reports whether op only reads: gets, reads and lists.
func readOnlyOp(op string) bool {
	for _, p := range []string{"s3 get ", "s3 read ", "s3 list "} {
		if strings.HasPrefix(op, p) {
			return true
		}
	}
	return false
}

// expand fills in the placeholders of a detail (see answerVerdicts).
func (a answer) expand(detail string) string {
	what := strconv.Itoa(a.status)
	if a.code != "" {
		what += " " + a.code
	}
	msg := ""
	if a.msg != "" {
		msg = ": " + a.msg
	}
	creds := ""
	if a.creds != "" {
		creds = " (from " + a.creds + ")"
	}
	nocreate := ""
	switch {
	case readOnlyOp(a.op):
		// Nothing a reader does creates a bucket, whatever the option.
		nocreate = ": check its name in the target's configuration"
	case !a.create:
		nocreate = " and create_buckets_on_demand is off"
	}
	return strings.NewReplacer(
		"{what}", what,
		"{msg}", msg,
		"{bucket}", strconv.Quote(a.bucket),
		"{cause}", a.cause,
		"{nocreate}", nocreate,
		"{creds}", creds,
	).Replace(detail)
}

// credentialSource names the provider of the default chain that gave the
// store its credentials (the SDK's name, such as EnvConfigCredentials or
// EC2RoleProvider), or "" when it cannot say. The SDK caches them: no
// request is made.
func (s *Store) credentialSource(ctx context.Context) string {
	p := s.client.Options().Credentials
	if p == nil {
		return ""
	}
	// Cached, they come at once; an expired cache would ask the chain
	// again, which an error message must not wait long for.
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := p.Retrieve(ctx)
	if err != nil {
		return ""
	}
	return c.Source
}
